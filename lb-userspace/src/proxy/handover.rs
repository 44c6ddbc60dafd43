//! Handing the L7 proxy's listening sockets from one daemon to the next (hitless restart and
//! upgrade, as HAProxy's seamless reload and Envoy's hot restart do).
//!
//! A daemon listens on a Unix socket beside its control socket ([`path_for`]). The next
//! daemon connects and sends a [`Request`]; the running one answers either
//! [`Answer::Running`] (it is not stopping and was not asked to take over) or with its
//! listening sockets, passed with `SCM_RIGHTS` in messages of at most
//! [`FDS_PER_MESSAGE`] descriptors. The successor confirms with [`RECEIVED`]; only then does
//! the predecessor close its own copies. A listening socket is never closed in between, so a
//! connection attempt during the hand-over waits in the kernel's accept queue and is accepted
//! by the successor: none is refused.
//!
//! The protocol itself, over any connected Unix stream, is here; when each side speaks is the
//! daemon's business.

use std::{
    io::{self, IoSlice, IoSliceMut, Read, Write},
    net::TcpListener,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// At most this many descriptors per message (the kernel's limit, `SCM_MAX_FD`, is 253).
pub const FDS_PER_MESSAGE: usize = 200;

/// How long either side waits for the other at each step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the successor says once it holds every socket.
pub const RECEIVED: &[u8] = b"received\n";

/// The hand-over socket of the daemon whose control socket is `control`.
pub fn path_for(control: &Path) -> PathBuf {
    let mut path = control.as_os_str().to_owned();
    path.push(".handover");
    PathBuf::from(path)
}

/// What the successor asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Only from a daemon that is stopping (SIGTERM) and waits for a successor.
    IfStopping,
    /// From any daemon: a running one steps down (`sluice run --take-over`).
    TakeOver,
}

impl Request {
    fn line(self) -> &'static [u8] {
        match self {
            Request::IfStopping => b"sluice-handover 1 if-stopping\n",
            Request::TakeOver => b"sluice-handover 1 take-over\n",
        }
    }

    /// The request a line (with its newline) asks.
    pub fn parse(line: &[u8]) -> Option<Request> {
        [Request::IfStopping, Request::TakeOver]
            .into_iter()
            .find(|r| r.line() == line)
    }

    /// Reads a successor's request.
    pub fn read(stream: &mut UnixStream) -> Result<Request, HandoverError> {
        let line = read_line(stream)?;
        Request::parse(&line).ok_or_else(|| {
            HandoverError::Protocol(format!(
                "unknown request {:?}",
                String::from_utf8_lossy(&line)
            ))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("talking to the other sluice over {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the hand-over: {0}")]
    Protocol(String),
    #[error("the hand-over: {0}")]
    Stream(#[from] io::Error),
}

/// The predecessor's answers.
pub enum Answer<'a> {
    /// It is running and was asked only if stopping: the successor must not start.
    Running,
    /// Its listening sockets.
    Sockets(&'a [BorrowedFd<'a>]),
}

/// The predecessor's side: answers a request. For [`Answer::Sockets`], returns once the
/// successor confirmed it holds them all (the caller may then close its copies).
pub fn answer(stream: &mut UnixStream, answer: Answer<'_>) -> Result<(), HandoverError> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    let sockets = match answer {
        Answer::Running => {
            stream.write_all(b"R")?;
            return Ok(());
        }
        Answer::Sockets(sockets) => sockets,
    };
    let mut chunks = sockets.chunks(FDS_PER_MESSAGE).peekable();
    if chunks.peek().is_none() {
        stream.write_all(b"L")?;
    }
    while let Some(chunk) = chunks.next() {
        let marker: &[u8] = if chunks.peek().is_some() { b"M" } else { b"L" };
        let fds: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(marker)],
            &rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
    }
    let confirmed = read_line(stream)?;
    if confirmed != RECEIVED {
        return Err(HandoverError::Protocol(format!(
            "the successor answered {:?} instead of confirming",
            String::from_utf8_lossy(&confirmed)
        )));
    }
    Ok(())
}

/// What the successor got.
#[derive(Debug)]
pub enum TakeOver {
    /// Nobody listens on the hand-over socket: no daemon, or one that does not hand over.
    Nobody,
    /// A daemon is running and did not step down ([`Request::IfStopping`]).
    Running,
    /// The predecessor's listening sockets, now this daemon's.
    Sockets(Vec<TcpListener>),
}

/// The successor's side: asks the daemon listening on `path`, if any.
pub fn take_over(path: &Path, request: Request) -> Result<TakeOver, HandoverError> {
    let io_error = |source| HandoverError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        // No daemon; or one this user may not ask (not root), which the steps that need
        // root then report.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(TakeOver::Nobody)
        }
        Err(e) => return Err(io_error(e)),
    };
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(io_error)?;
    stream
        .set_write_timeout(Some(STEP_TIMEOUT))
        .map_err(io_error)?;
    stream.write_all(request.line()).map_err(io_error)?;
    let mut sockets = Vec::new();
    loop {
        let (marker, fds) = receive_message(&stream).map_err(io_error)?;
        sockets.extend(fds.into_iter().map(TcpListener::from));
        match marker {
            Some(b'R') if sockets.is_empty() => return Ok(TakeOver::Running),
            Some(b'M') => continue,
            Some(b'L') => break,
            Some(other) => {
                return Err(HandoverError::Protocol(format!(
                    "unexpected message {:?}",
                    other as char
                )))
            }
            None => {
                return Err(HandoverError::Protocol(
                    "the other sluice closed the hand-over before it was complete".into(),
                ))
            }
        }
    }
    stream.write_all(RECEIVED).map_err(io_error)?;
    Ok(TakeOver::Sockets(sockets))
}

/// One message: its one-byte marker (None at the end of the stream) and the descriptors
/// passed with it, owned from here on (so they are closed if anything goes wrong later).
fn receive_message(stream: &UnixStream) -> io::Result<(Option<u8>, Vec<OwnedFd>)> {
    let mut marker = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(&mut marker)];
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us;
            // nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
    let read = message.bytes;
    if truncated {
        return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
    }
    Ok(((read > 0).then_some(marker[0]), fds))
}

/// A line of at most 64 bytes, without reading past its end.
fn read_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// `n` listening sockets on 127.0.0.1, ports chosen by the kernel.
    fn listeners(n: usize) -> Vec<TcpListener> {
        (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect()
    }

    /// Runs `answer` on one end of a connected pair in a thread, `take` on the other.
    fn exchange(
        request: Request,
        reply: impl FnOnce(&mut UnixStream, Request) + Send + 'static,
    ) -> TakeOver {
        let dir = std::env::temp_dir().join(format!(
            "sluice-handover-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock.handover");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = Request::read(&mut stream).unwrap();
            reply(&mut stream, request);
        });
        let got = take_over(&path, request).unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        got
    }

    #[test]
    fn every_socket_arrives_and_still_listens_in_several_messages() {
        // More than one message's worth.
        let originals = listeners(FDS_PER_MESSAGE + 5);
        let addrs: Vec<_> = originals.iter().map(|l| l.local_addr().unwrap()).collect();
        let got = exchange(Request::TakeOver, move |stream, request| {
            assert_eq!(request, Request::TakeOver);
            let fds: Vec<BorrowedFd> = originals.iter().map(AsFd::as_fd).collect();
            answer(stream, Answer::Sockets(&fds)).unwrap();
            // Confirmed: the predecessor closes its copies; the sockets live on.
            drop(originals);
        });
        let TakeOver::Sockets(sockets) = got else {
            panic!("{got:?}")
        };
        let received: Vec<_> = sockets.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(received, addrs);
        // A connection to a handed-over socket is accepted by the successor.
        let client = std::net::TcpStream::connect(addrs[FDS_PER_MESSAGE + 1]).unwrap();
        let (accepted, peer) = sockets[FDS_PER_MESSAGE + 1].accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);
    }

    #[test]
    fn a_running_daemon_refuses_and_no_sockets_is_an_answer_too() {
        let got = exchange(Request::IfStopping, |stream, request| {
            assert_eq!(request, Request::IfStopping);
            answer(stream, Answer::Running).unwrap();
        });
        assert!(matches!(got, TakeOver::Running), "{got:?}");
        let got = exchange(Request::IfStopping, |stream, _| {
            answer(stream, Answer::Sockets(&[])).unwrap();
        });
        assert!(
            matches!(got, TakeOver::Sockets(ref s) if s.is_empty()),
            "{got:?}"
        );
    }

    #[test]
    fn nobody_there_is_not_an_error() {
        let path =
            std::env::temp_dir().join(format!("sluice-handover-none-{}", std::process::id()));
        assert!(matches!(
            take_over(&path, Request::IfStopping).unwrap(),
            TakeOver::Nobody
        ));
        // A socket file nobody listens on (left by a daemon that was killed).
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(listener);
        assert!(matches!(
            take_over(&path, Request::IfStopping).unwrap(),
            TakeOver::Nobody
        ));
        let _ = std::fs::remove_file(&path);
    }
}
