//! Host-side TCP ports for qemu's `hostfwd` rules: finding free ones and checking that a
//! forwarded one reaches a listening guest.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// Returns `count` distinct ports on 127.0.0.1 that were free a moment ago.
///
/// The kernel picks each one; all listeners stay open until every port is chosen, so the
/// ports differ from each other. Another process may still take one before qemu binds it,
/// in which case qemu exits with "Could not set up host forwarding rule".
pub fn free_local_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to find a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr().context("reading the address of a probe listener")?.port())).collect()
}

/// The guest command whose output [`listens_on`] reads.
pub const GUEST_TCP_TABLE: &str = "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true";

/// Whether a `/proc/net/tcp{,6}` table shows a socket listening on `port` (any address).
pub fn listens_on(table: &str, port: u16) -> bool {
    const LISTEN: &str = "0A";
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, local, _, state, ..]
            if *state == LISTEN
                && local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port))
    })
}

/// What one connection through a forwarded port showed.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// The service sent bytes (a banner, or an answer to the HTTP request).
    Answered,
    /// The connection stayed open without an answer: the service waits for its own protocol.
    Silent,
    /// Refused, reset or closed without a byte.
    Closed(String),
}

/// The request the probe sends: HTTP servers answer it, others usually answer something.
const PROBE_REQUEST: &[u8] = b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// Connects to 127.0.0.1:`port`, sends an HTTP `HEAD` request and waits for an answer.
///
/// qemu's user network accepts on the host side before it knows whether the guest accepts,
/// and closes the connection when the guest refuses; so only bytes, or an open but quiet
/// connection, show that a guest service is behind the port. A quiet connection also looks
/// like this while the guest has no network stack at all, which is why the harness first
/// checks inside the guest that something listens.
pub fn probe_forward(port: u16, wait: Duration) -> Probe {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = match TcpStream::connect_timeout(&addr, wait) {
        Ok(stream) => stream,
        Err(e) => return Probe::Closed(format!("connecting to {addr}: {e}")),
    };
    if let Err(e) = stream.set_read_timeout(Some(wait)) {
        return Probe::Closed(format!("setting a read timeout on {addr}: {e}"));
    }
    if let Err(e) = stream.write_all(PROBE_REQUEST) {
        return Probe::Closed(format!("writing to {addr}: {e}"));
    }
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => Probe::Closed(format!("{addr} closed the connection without a byte")),
        Ok(_) => Probe::Answered,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Probe::Silent,
        Err(e) => Probe::Closed(format!("reading from {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    fn serve_once(handle: impl FnOnce(TcpStream) + Send + 'static) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || handle(listener.accept().unwrap().0));
        port
    }

    /// Captured from a Linux guest: nginx on 0.0.0.0:80 and [::]:80, sshd on 127.0.0.1:22,
    /// and a client connection from port 80 that is not a listener.
    const TCP_TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:1F90 0202000A:0050 01 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 20 4 30 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1237 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_are_found_in_the_tcp_table() {
        assert!(listens_on(TCP_TABLE, 80));
        assert!(listens_on(TCP_TABLE, 22));
        assert!(!listens_on(TCP_TABLE, 8080), "an established connection is no listener");
        assert!(!listens_on(TCP_TABLE, 443));
        assert!(!listens_on("", 80));
    }

    #[test]
    fn an_http_server_answers() {
        let port = serve_once(|mut s| {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        });
        assert_eq!(probe_forward(port, WAIT), Probe::Answered);
    }

    #[test]
    fn a_quiet_server_is_silent() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let port = serve_once(move |s| {
            // Hold the connection open until the probe is done.
            let _ = rx.recv();
            drop(s);
        });
        assert_eq!(probe_forward(port, Duration::from_millis(300)), Probe::Silent);
        tx.send(()).unwrap();
    }

    /// What qemu's user network does when the guest refuses the forwarded connection.
    #[test]
    fn accept_then_close_is_closed() {
        let port = serve_once(drop);
        assert!(matches!(probe_forward(port, WAIT), Probe::Closed(_)));
    }

    #[test]
    fn nothing_listening_is_closed() {
        let port = free_local_ports(1).unwrap()[0];
        assert!(matches!(probe_forward(port, WAIT), Probe::Closed(r) if r.contains("connecting")));
    }

    #[test]
    fn ports_are_distinct_nonzero_and_bindable() {
        let ports = free_local_ports(4).unwrap();
        assert_eq!(ports.len(), 4);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{ports:?}");
        for port in ports {
            assert_ne!(port, 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn zero_ports_is_fine() {
        assert!(free_local_ports(0).unwrap().is_empty());
    }
}
