//! A process named by pid and start time (field 22 of `/proc/PID/stat`, as Slipway's
//! supervisors record their children): a pid the kernel gives to another process once this one
//! ends (soon, on a busy machine with a small `pid_max`) is not taken for it.

use serde_json::Value;

/// One process: its pid and its start time, in clock ticks since boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// The process id.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub start: u64,
}

impl Process {
    /// The process running as `pid` now, if one does (a zombie does not run).
    pub fn of(pid: impl TryInto<u32>) -> Option<Process> {
        let pid = pid.try_into().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `PID (COMM) STATE ...`: the command may hold anything, so fields follow the last `)`.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        if matches!(fields.next()?, "Z" | "X") {
            return None;
        }
        // After the state, the start time is the 19th field (the 22nd of the line).
        let start = fields.nth(18)?.parse().ok()?;
        Some(Process { pid, start })
    }

    /// The process a state file records (`{"pid": …, "start": …}`), running or not.
    pub fn from_json(value: &Value) -> Option<Process> {
        Some(Process {
            pid: u32::try_from(value["pid"].as_u64()?).ok()?,
            start: value["start"].as_u64()?,
        })
    }

    /// The process a state file records, if that one runs now: not whatever has its pid since.
    pub fn recorded(value: &Value) -> Option<Process> {
        Process::from_json(value).filter(Process::runs)
    }

    /// Whether it still runs: its pid has the same start time, and is not a zombie.
    pub fn runs(&self) -> bool {
        Process::of(self.pid) == Some(*self)
    }
}
