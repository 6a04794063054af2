//! Connecting to the unix sockets that qemu serves (QMP, the command channel).

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Connects to `path`, retrying while qemu has not created or is not yet listening on it.
///
/// `alive` is asked before every retry, so a qemu that died fails the wait at once.
pub fn connect(path: &Path, deadline: Instant, alive: &mut dyn FnMut() -> Result<()>) -> Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                alive()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn waits_for_a_socket_that_appears_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.sock");
        let server_path = path.clone();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let listener = UnixListener::bind(server_path).unwrap();
            listener.accept().unwrap();
        });
        connect(&path, Instant::now() + Duration::from_secs(30), &mut || Ok(())).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn gives_up_at_the_deadline_or_when_the_server_died() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never.sock");
        let err = connect(&path, Instant::now(), &mut || Ok(())).unwrap_err();
        assert!(format!("{err:#}").contains("never.sock"), "{err:#}");
        let far = Instant::now() + Duration::from_secs(600);
        let err = connect(&path, far, &mut || anyhow::bail!("qemu exited")).unwrap_err();
        assert_eq!(err.to_string(), "qemu exited");
    }
}
