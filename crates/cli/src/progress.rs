//! Progress shown while a long verb runs (migrations, tenant creation and
//! deletion, resharding), on stderr and only when stderr is a terminal:
//! piped or redirected, the verbs print exactly what they print without
//! it, so scripts and tests see plain output.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a spinner turns.
const TICK: Duration = Duration::from_millis(120);

/// Whether progress is drawn at all.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner with a message while one request runs; cleared when dropped,
/// so the verb's own output follows on a clean line.
pub struct Spinner(ProgressBar);

impl Spinner {
    /// Starts `message` spinning (nothing when stderr is no terminal).
    pub fn start(message: impl Into<String>) -> Self {
        if !on_terminal() {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        // The template is a constant: it parses.
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(TICK);
        Self(bar)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar of rows copied out of rows estimated (of unknown length until
/// there is an estimate), with the job's phase and lag as its message.
/// Short enough for an 80-column terminal.
pub fn rows_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{bar:20}] {human_pos}/{human_len} rows  {msg} ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("#>."));
    }
    bar.enable_steady_tick(TICK);
    bar
}
