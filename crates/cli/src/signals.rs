//! Shutdown on SIGINT/SIGTERM: the first cancels the root token (drain),
//! a second exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first signal; exits the process on the second.
pub fn install(token: CancellationToken) -> anyhow::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        for n in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!("shutting down (signal again to exit at once)");
                token.cancel();
            } else {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
