//! The passphrase-derived keystream that encrypts a minisign secret key.
//!
//! minisign stores libsodium's `opslimit`/`memlimit` in the key file rather than scrypt's own
//! parameters, and lets `crypto_pwhash_scryptsalsa208sha256` turn them into N, r and p. To read
//! keys minisign wrote (and to have minisign read ours) we must pick the same N, r and p from
//! the same limits, so [`scrypt_params`] follows libsodium's `pickparams` step by step.

use anyhow::{Context, Result, bail};

/// libsodium's `crypto_pwhash_scryptsalsa208sha256_OPSLIMIT_SENSITIVE`, what minisign uses.
pub(super) const OPSLIMIT_SENSITIVE: u64 = 33_554_432;
/// libsodium's `crypto_pwhash_scryptsalsa208sha256_MEMLIMIT_SENSITIVE` (1 GiB).
pub(super) const MEMLIMIT_SENSITIVE: u64 = 1_073_741_824;

/// Refuse key files whose limits would make scrypt allocate more than 4 GiB (128 * r * N):
/// minisign itself writes N = 2^20 with r = 8 (1 GiB), and a key file is read before anything
/// has been authenticated, so a corrupt one must not be able to exhaust the machine.
const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// N (as log2), r and p for the given limits, exactly as libsodium's `pickparams` chooses them.
pub(super) fn scrypt_params(opslimit: u64, memlimit: u64) -> Result<scrypt::Params> {
    let opslimit = opslimit.max(32_768);
    let r: u32 = 8;
    let (log_n, p) = if opslimit < memlimit / 32 {
        let max_n = opslimit / (u64::from(r) * 4);
        (smallest_log_n_above(max_n / 2), 1)
    } else {
        let max_n = memlimit / (u64::from(r) * 128);
        let log_n = smallest_log_n_above(max_n / 2);
        let max_rp = ((opslimit / 4) >> log_n).min(0x3fff_ffff);
        let p = u32::try_from(max_rp / u64::from(r)).expect("max_rp is at most 0x3fffffff");
        (log_n, p)
    };
    let memory = 128u64.saturating_mul(u64::from(r)).saturating_mul(1u64 << log_n);
    if memory > MAX_MEMORY_BYTES {
        bail!(
            "the key file asks scrypt for {} MiB of memory (opslimit {opslimit}, memlimit \
             {memlimit}); refusing more than {} MiB",
            memory >> 20,
            MAX_MEMORY_BYTES >> 20
        );
    }
    scrypt::Params::new(log_n, r, p).map_err(|_| {
        anyhow::anyhow!(
            "the key file's limits (opslimit {opslimit}, memlimit {memlimit}) give unusable \
             scrypt parameters N=2^{log_n}, r={r}, p={p}"
        )
    })
}

/// libsodium's loop: the first `n` in 1..63 with `2^n > bound`.
fn smallest_log_n_above(bound: u64) -> u8 {
    let mut log_n = 1u8;
    while log_n < 63 && (1u64 << log_n) <= bound {
        log_n += 1;
    }
    log_n
}

/// Fills `out` with the scrypt output that minisign XORs over the key id, secret key and
/// checksum.
pub(super) fn keystream(passphrase: &[u8], salt: &[u8], opslimit: u64, memlimit: u64, out: &mut [u8]) -> Result<()> {
    let params = scrypt_params(opslimit, memlimit)?;
    scrypt::scrypt(passphrase, salt, &params, out)
        .map_err(|_| anyhow::anyhow!("scrypt refused an output of {} bytes", out.len()))
        .context("deriving the key-encryption stream from the passphrase")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(opslimit: u64, memlimit: u64) -> (u8, u32, u32) {
        let p = scrypt_params(opslimit, memlimit).unwrap();
        (p.log_n(), p.r(), p.p())
    }

    #[test]
    fn sensitive_limits_are_minisigns_n_2_20() {
        // What every minisign-encrypted key uses: 1 GiB, N = 2^20, r = 8, p = 1.
        assert_eq!(triple(OPSLIMIT_SENSITIVE, MEMLIMIT_SENSITIVE), (20, 8, 1));
    }

    #[test]
    fn interactive_limits_match_libsodium() {
        // libsodium documents OPSLIMIT/MEMLIMIT_INTERACTIVE as N = 2^14, r = 8, p = 1.
        assert_eq!(triple(524_288, 16_777_216), (14, 8, 1));
    }

    #[test]
    fn ops_bound_branch() {
        // opslimit < memlimit / 32: N comes from the operation budget, p is 1.
        assert_eq!(triple(32_768, 1 << 30), (10, 8, 1));
        // Below 32768 libsodium raises opslimit to 32768 first.
        assert_eq!(triple(0, 1 << 30), (10, 8, 1));
    }

    #[test]
    fn memory_bound_branch_raises_p_with_spare_ops() {
        // memlimit 16 MiB → N = 2^14; opslimit 2^22 / 4 / 2^14 = 64 → p = 8.
        assert_eq!(triple(1 << 22, 1 << 24), (14, 8, 8));
    }

    #[test]
    fn huge_memlimit_is_refused() {
        let err = scrypt_params(u64::MAX, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err:#}");
    }
}
