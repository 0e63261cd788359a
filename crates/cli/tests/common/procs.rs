//! The `shardline` binary as child processes of a test: killed (and
//! reaped) when dropped.

use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_shardline");

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends `signal` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

/// A port for a process started (or restarted) on it later: below the
/// ephemeral range, so no outgoing connection takes it meanwhile.
pub fn free_port() -> u16 {
    shardline_localpg::stable_port().unwrap()
}

/// `shardline ARGS`, its output into `log`.
pub fn spawn(args: &[&str], log: &std::path::Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}
