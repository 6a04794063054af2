//! What the updater does at boot: before the stack starts, a version on trial saves the stack's
//! state (once per attempt), and a version that was rolled back to restores it; once a new
//! version is good its saved copy goes. And the verdict when a version on trial is not ready
//! by the deadline: what failed is recorded, for the version the appliance falls back to.

use super::boot_entries::EntryState;
use super::state::{Attempt, Saved, StateStore};
use super::{Status, Target};
use anyhow::{Context, Result};

/// What [`on_boot`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum BootAction {
    /// Nothing to do: no update in flight.
    Nothing,
    /// A version on trial: the state was saved now (bytes), or by an earlier try.
    Saved(Saved),
    /// The appliance came back to this version after a failed update: the state is as it was
    /// before the update (restored now or earlier).
    RolledBack(Attempt),
    /// The version an update installed is good: its saved copy of the state is gone.
    Committed,
}

impl BootAction {
    /// What happened, in one line (for the journal).
    pub fn summary(&self) -> String {
        match self {
            BootAction::Nothing => "no update in flight".into(),
            BootAction::Saved(Saved::Now(bytes)) => {
                format!("a version on trial: saved the stack's state ({bytes} bytes) before it first starts it")
            }
            BootAction::Saved(Saved::Earlier) => {
                "a version on trial: the stack's state was saved by an earlier try".into()
            }
            BootAction::Saved(Saved::NoRoom { needed, free }) => {
                format!("a version on trial: no room to save the stack's state ({needed} bytes needed, {free} free)")
            }
            BootAction::RolledBack(a) => {
                format!("back on {} after {} failed: the stack's state is restored", a.from, a.to)
            }
            BootAction::Committed => "the updated version is good: its saved copy of the state is dropped".into(),
        }
    }

    /// The console's lines for it (after the banner), if any.
    pub fn console(&self) -> Vec<String> {
        match self {
            BootAction::RolledBack(a) => {
                let mut lines = vec![format!("airlock: rolled back from {} to {}", a.to, a.from)];
                lines.extend(a.failed.iter().map(|u| format!("failed in {}: {u}", a.to)));
                if !a.why.is_empty() {
                    lines.push(format!("why: {}", a.why));
                }
                lines
            }
            BootAction::Saved(Saved::NoRoom { needed, free }) => vec![format!(
                "airlock: no room to save the stack's state before this version first starts it ({needed} bytes \
                 needed, {free} free): giving this version up"
            )],
            _ => Vec::new(),
        }
    }
}

/// Whether the running version (`holds`) is on trial: its entry has a counter, and it is not
/// the version the last attempt came from (a downgrade steps that one's entry back to `+0`: when
/// it runs again, the downgrade failed).
fn on_trial(status: &Status, holds: &(String, String), store: &StateStore) -> Result<bool> {
    if !status.entry_of(holds).is_some_and(|e| e.state.counting()) {
        return Ok(false);
    }
    Ok(!store.attempt()?.is_some_and(|a| a.from == holds.1 && a.to != holds.1))
}

/// Runs early at every boot, before the stack (see the module's documentation).
pub fn on_boot(target: &Target, store: &StateStore) -> Result<BootAction> {
    let status = Status::read(target)?;
    let running = status.running();
    let holds = running.holds.clone().with_context(|| format!("the running slot {} has no version", running.slot))?;
    if on_trial(&status, &holds, store)? {
        let from = status.other().holds.as_ref().map(|h| h.1.clone()).unwrap_or_default();
        return Ok(BootAction::Saved(store.save(&from, &holds.1, &target.root_hash)?));
    }
    // A rollback is when the attempt's version is out of tries (or gone) and this is the
    // version it came from.
    if let Some(a) = store.attempt()? {
        let failed = status
            .entries
            .iter()
            .filter(|e| e.name == holds.0 && e.version == a.to)
            .all(|e| matches!(e.state, EntryState::Bad { .. }));
        if a.from == holds.1 && failed {
            if let Some(back) = store.restore_after_rollback(&holds.1)? {
                // Back after a failed downgrade: this version's entry is good again.
                if let Some(e) = status.entry_of(&holds) {
                    super::boot_entries::mark(&target.esp.join("EFI/Linux"), e, true)?;
                }
                return Ok(BootAction::RolledBack(back));
            }
        }
    }
    if store.commit(&holds.1)? {
        return Ok(BootAction::Committed);
    }
    Ok(BootAction::Nothing)
}

/// The boot's verdict on the running version, if it is on trial (systemd-boot's boot counting):
/// `good` once the appliance is ready (`boot-complete.target`), `bad` when it must not go on
/// (no room to save the state). Returns the entry's new file name, or `None` when the running
/// version is not on trial.
pub fn mark_running(target: &Target, good: bool) -> Result<Option<String>> {
    let status = Status::read(target)?;
    let Some(holds) = status.running().holds.clone() else { return Ok(None) };
    let Some(entry) = status.entry_of(&holds) else { return Ok(None) };
    super::boot_entries::mark(&target.esp.join("EFI/Linux"), entry, good)
}

/// The deadline passed (or the stack failed) on a version on trial: records what failed for
/// the version the appliance will fall back to. Returns whether this boot is on trial (then
/// the caller reboots).
pub fn give_up(target: &Target, store: &StateStore, failed: Vec<String>, why: &str) -> Result<bool> {
    let status = Status::read(target)?;
    let running = status.running();
    let Some(holds) = running.holds.clone() else { return Ok(false) };
    if !on_trial(&status, &holds, store)? {
        return Ok(false);
    }
    if let Some(mut a) = store.attempt()?
        && a.to == holds.1
    {
        a.failed = failed;
        a.why = why.to_string();
        store.write_attempt(&a)?;
    }
    Ok(true)
}
