//! The never-two assertion: a sampler that probes both client ports in turn, checked together
//! with the nodes' own timestamped reports of when they held the lock.

use super::*;

/// Probes two client ports in the pattern A, B, A: both A probes and the B probe serving
/// means both served at the moment of the B probe. Never two active must hold at every sample.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    progress: tokio::sync::watch::Receiver<SamplerReport>,
    task: JoinHandle<SamplerReport>,
}

#[derive(Clone, Copy)]
enum Probe {
    Echo,
    Connect,
}

impl Probe {
    async fn serves(self, port: u16) -> bool {
        match self {
            Probe::Echo => serves(port).await,
            Probe::Connect => match try_connect(port, Duration::from_millis(300)).await {
                Some(s) => {
                    abort(s);
                    true
                }
                None => false,
            },
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct SamplerReport {
    pub samples: u32,
    pub a_served: u32,
    pub b_served: u32,
    pub both: u32,
    /// When A last served (its second probe of a sample), and when B first served: one clock,
    /// so "A stopped before B started" is a comparison of two instants of the same sampler.
    pub a_last: Option<std::time::Instant>,
    pub b_first: Option<std::time::Instant>,
}

impl Sampler {
    /// Probes by a round trip through the proxy to its echo upstream.
    pub fn start(a: u16, b: u16) -> Sampler {
        Sampler::with_probe(a, b, Probe::Echo, Duration::from_millis(5))
    }

    /// For ports whose upstream is not an echo server: a port serves when a TCP connect to it
    /// succeeds. Right where only a gated listener can bind the port, as then a successful
    /// connect means exactly "this node serves clients".
    pub fn connect_only(a: u16, b: u16, pacing: Duration) -> Sampler {
        Sampler::with_probe(a, b, Probe::Connect, pacing)
    }

    fn with_probe(a: u16, b: u16, probe: Probe, pacing: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, progress) = tokio::sync::watch::channel(SamplerReport::default());
        let s = stop.clone();
        let task = tokio::spawn(async move {
            // Bounded in count as well as by the test.
            while !s.load(Ordering::Relaxed) && tx.borrow().samples < 100_000 {
                let a1 = probe.serves(a).await;
                let b1 = probe.serves(b).await;
                let b_at = std::time::Instant::now();
                let a2 = probe.serves(a).await;
                let a_at = std::time::Instant::now();
                tx.send_modify(|r| {
                    if a1 || a2 {
                        r.a_last = Some(a_at);
                    }
                    if b1 && r.b_first.is_none() {
                        r.b_first = Some(b_at);
                    }
                    r.samples += 1;
                    r.a_served += u32::from(a1 && a2);
                    r.b_served += u32::from(b1);
                    r.both += u32::from(a1 && b1 && a2);
                });
                tokio::time::sleep(pacing).await;
            }
            tx.borrow().clone()
        });
        Sampler {
            stop,
            progress,
            task,
        }
    }

    /// Waits until the sampler's counts satisfy `pred` (e.g. it has seen A serve).
    pub async fn wait_for(&mut self, pred: impl Fn(&SamplerReport) -> bool) {
        tokio::time::timeout(BOUND, self.progress.wait_for(|r| pred(r)))
            .await
            .expect("sampler condition not met in time")
            .expect("sampler stopped");
    }

    pub async fn finish(self) -> SamplerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// How far two nodes' own reports of holding a lock may overlap without failing the never-two
/// assertion: a holder says "standby (released: …)" just after it releases, so the peer may
/// acquire, open and say "active" first; and each node's reader stamps a line when it runs.
pub const REPORT_SLACK: Duration = Duration::from_millis(50);

/// How a signal the test sent appears in a node's history.
pub const SIGNAL_SENT: &str = "(test) sent signal ";

/// The spans in which a node said it held a lock: (lock, from, until). A span ends at the
/// node's next standby line for that lock, or at a SIGKILL or SIGSTOP the test sent it (a
/// dead or frozen process serves nobody; a woken one says "lost" before it serves again);
/// `None` while it still holds.
pub fn active_spans(history: &[Note]) -> Vec<(String, Instant, Option<Instant>)> {
    let mut spans: Vec<(String, Instant, Option<Instant>)> = Vec::new();
    for note in history {
        let stopped = [libc::SIGKILL, libc::SIGSTOP]
            .iter()
            .any(|s| note.line == format!("{SIGNAL_SENT}{s}"));
        let status = note.line.strip_prefix("STATUS=lock ");
        let Some((lock, state)) = status.and_then(|s| s.split_once(": ")) else {
            if stopped {
                for span in spans.iter_mut().filter(|s| s.2.is_none()) {
                    span.2 = Some(note.at);
                }
            }
            continue;
        };
        let open = spans.iter_mut().find(|s| s.0 == lock && s.2.is_none());
        match (open, state.starts_with("active")) {
            (None, true) => spans.push((lock.to_owned(), note.at, None)),
            (Some(span), false) => span.2 = Some(note.at),
            _ => {}
        }
    }
    spans
}

/// Never two active, seen two ways: the sampler never found both ports serving at once, and
/// the nodes' own timestamped reports of holding the lock never overlap (beyond
/// `REPORT_SLACK`).
pub fn assert_never_two(report: &SamplerReport, nodes: &[Node]) {
    let mut problems = Vec::new();
    if report.samples == 0 {
        problems.push(format!("the sampler took no sample: {report:?}"));
    }
    if report.both > 0 {
        problems.push(format!("both nodes served at once: {report:?}"));
    }
    let histories: Vec<Vec<Note>> = nodes.iter().map(Node::history).collect();
    let spans: Vec<_> = histories.iter().map(|h| active_spans(h)).collect();
    let now = Instant::now();
    for (i, a) in spans.iter().enumerate() {
        for (j, b) in spans.iter().enumerate().skip(i + 1) {
            for ((lock, a0, a1), (_, b0, b1)) in a
                .iter()
                .flat_map(|x| b.iter().filter(move |y| y.0 == x.0).map(move |y| (x, y)))
            {
                let from = (*a0).max(*b0);
                let until = a1.unwrap_or(now).min(b1.unwrap_or(now));
                let overlap = until.saturating_duration_since(from);
                if overlap > REPORT_SLACK {
                    let (a, b) = (&nodes[i].name, &nodes[j].name);
                    problems.push(format!(
                        "{a} and {b} both said they held {lock} for {overlap:?}"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "never two active:\n{}\nthe nodes' notify lines:\n{}",
        problems.join("\n"),
        timeline(nodes, &histories)
    );
}

/// The nodes' histories merged, on one clock from the first line.
fn timeline(nodes: &[Node], histories: &[Vec<Note>]) -> String {
    let mut all: Vec<(Instant, &str, &str)> = nodes
        .iter()
        .zip(histories)
        .flat_map(|(n, h)| {
            h.iter()
                .map(|note| (note.at, n.name.as_str(), note.line.as_str()))
        })
        .collect();
    all.sort_by_key(|e| e.0);
    let t0 = all.first().map_or_else(Instant::now, |e| e.0);
    all.iter()
        .map(|(at, name, line)| format!("{:>9.3?} {name}: {line}\n", at.duration_since(t0)))
        .collect()
}
