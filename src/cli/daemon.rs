//! `lockgate run`: the daemon on a multi-thread runtime, stopped by SIGTERM/SIGINT (a second
//! one hurries the drain), reloaded by SIGHUP.

use std::process::ExitCode;

use lockgate::config::Config;

use super::{EXIT_RUNTIME, runtime};

/// Runs the daemon until it stops; exit 1 (the error logged once) if it fails.
pub fn run(config: Config) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let reloads = reload_signal()?;
        // Registered after the first signal, so only a second one completes it.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = first_tx.send(());
        };
        let hurry = async move {
            let _ = first_rx.await;
            match shutdown_signal() {
                Ok(second) => second.await,
                Err(_) => std::future::pending().await,
            }
        };
        lockgate::run_with_reload(config, shutdown, hurry, reloads).await
    });
    // Everything has stopped in order; a blocking thread still stuck in the kernel (a read of
    // a hung shared mount) must not hold the exit: do not join it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a log line when errors are logged (text or JSON), else on stderr.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e:#}");
            } else {
                errln!("lockgate: {e:#}");
            }
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Yields on every SIGHUP.
fn reload_signal() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
