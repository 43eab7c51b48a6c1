//! One lockgate node on the file lock, in a scratch folder of its own, fronting an echo
//! upstream, with an admin endpoint, holding its lock: the start of the single-node tests.

use std::path::PathBuf;

use super::config_file::{file_spec, scratch, with_admin};
use super::{Node, NodeSpec, Upstream, free_port};

pub struct Solo {
    pub node: Node,
    /// The gated client route's port.
    pub port: u16,
    /// The admin endpoint's port.
    pub admin: u16,
    pub config: PathBuf,
    pub up: Upstream,
    /// Last: the node's log lives here.
    pub dir: tempfile::TempDir,
}

impl Solo {
    /// Writes node `id`'s config (`file_spec`, changed by `tune`) with an `[admin]` table
    /// (`admin_keys` in it), starts the node and waits until it holds the lock.
    pub async fn active(
        id: &str,
        admin_keys: &str,
        tune: impl FnOnce(NodeSpec) -> NodeSpec,
    ) -> Solo {
        let (dir, locks) = scratch();
        let up = Upstream::start().await;
        let (admin, port) = (free_port(), free_port());
        let spec = tune(file_spec(id, &locks, port, up.addr));
        let config = with_admin(spec.write(dir.path()), admin, admin_keys);
        let mut node = Node::start(id, &config, dir.path()).await;
        node.wait_active().await;
        Solo {
            node,
            port,
            admin,
            config,
            up,
            dir,
        }
    }
}
