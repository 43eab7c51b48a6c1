//! This node's name: the kernel's host name (`uname`), which `node-id` defaults to and owner
//! records and `/status` carry as `host`.

/// The kernel's host name (uname's nodename), if it has one.
pub fn hostname() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// `node-id` when the file sets none: the host name.
pub(super) fn default_node_id() -> String {
    hostname().unwrap_or_else(|| "lockgate".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_name_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(super::hostname().as_deref(), Some(kernel.trim()));
    }
}
