//! Reading a systemd unit's state in the guest, for `wait_for_unit`.

use crate::shell;

/// The guest command whose output [`UnitState::parse`] reads.
pub fn state_command(unit: &str) -> String {
    format!(
        "systemctl show --property=ActiveState --property=SubState --property=LoadState -- {}; \
         echo \"Jobs=$(systemctl list-jobs --no-legend --no-pager 2>/dev/null | grep -cv 'No jobs running')\"",
        shell::quote(unit)
    )
}

/// The guest command that explains a failed unit.
pub fn status_command(unit: &str) -> String {
    let unit = shell::quote(unit);
    format!("systemctl status --no-pager --full -- {unit}; journalctl --no-pager -n 40 -u {unit}")
}

/// What `systemctl show` and `list-jobs` said about a unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub active: String,
    pub sub: String,
    pub load: String,
    /// Jobs queued in the whole system manager; `None` if unknown.
    pub jobs: Option<u32>,
}

/// What waiting for a unit should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Active,
    Failed,
    /// Not active, and nothing will change that: no jobs are pending.
    Hopeless(String),
    Waiting,
}

impl UnitState {
    pub fn parse(output: &str) -> UnitState {
        let mut state = UnitState::default();
        for line in output.lines() {
            match line.split_once('=') {
                Some(("ActiveState", v)) => state.active = v.trim().to_owned(),
                Some(("SubState", v)) => state.sub = v.trim().to_owned(),
                Some(("LoadState", v)) => state.load = v.trim().to_owned(),
                Some(("Jobs", v)) => state.jobs = v.trim().parse().ok(),
                _ => {}
            }
        }
        state
    }

    pub fn verdict(&self) -> Verdict {
        match self.active.as_str() {
            "active" => Verdict::Active,
            "failed" => Verdict::Failed,
            "inactive" if self.jobs == Some(0) => Verdict::Hopeless(if self.load == "loaded" {
                "it is inactive and no jobs are pending".to_owned()
            } else {
                format!("its LoadState is {:?} and no jobs are pending", self.load)
            }),
            _ => Verdict::Waiting,
        }
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActiveState={} SubState={} LoadState={}", self.active, self.sub, self.load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(output: &str) -> UnitState {
        UnitState::parse(output)
    }

    #[test]
    fn parses_systemctl_show() {
        let s = state("LoadState=loaded\nActiveState=activating\nSubState=start\nJobs=3\n");
        assert_eq!(
            s,
            UnitState { active: "activating".into(), sub: "start".into(), load: "loaded".into(), jobs: Some(3) }
        );
        assert_eq!(s.verdict(), Verdict::Waiting);
        assert_eq!(s.to_string(), "ActiveState=activating SubState=start LoadState=loaded");
    }

    #[test]
    fn verdicts() {
        assert_eq!(state("ActiveState=active\nJobs=5").verdict(), Verdict::Active);
        assert_eq!(state("ActiveState=failed\nJobs=0").verdict(), Verdict::Failed);
        // Early in boot: not started yet, but the boot transaction is still running.
        assert_eq!(state("ActiveState=inactive\nLoadState=loaded\nJobs=12").verdict(), Verdict::Waiting);
        assert!(matches!(
            state("ActiveState=inactive\nLoadState=loaded\nJobs=0").verdict(),
            Verdict::Hopeless(r) if r.contains("no jobs")
        ));
        assert!(matches!(
            state("ActiveState=inactive\nLoadState=not-found\nJobs=0").verdict(),
            Verdict::Hopeless(r) if r.contains("not-found")
        ));
        // systemctl not reachable yet: nothing parsed.
        assert_eq!(state("Failed to connect to bus\nJobs=").verdict(), Verdict::Waiting);
    }

    #[test]
    fn unit_names_are_quoted() {
        assert!(state_command("a b.service").contains("-- 'a b.service';"));
        assert!(status_command("x;reboot").contains("-u 'x;reboot'"));
    }
}
