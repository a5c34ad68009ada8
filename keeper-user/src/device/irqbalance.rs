//! irqbalance's control socket: a running irqbalance (built with its UI, as Debian's is) listens
//! on `/run/irqbalance/irqbalance<PID>.sock` and takes one command per connection from root
//! (it checks the sender's credentials): `settings cpus <list>` bans CPUs from its balancing
//! (`NULL`: none banned by this socket), `setup` answers its settings (`… BANNED <mask>`).
//! That is how intel's lpmd tells it to leave CPUs alone; there is no other runtime way short
//! of restarting it with `IRQBALANCE_BANNED_CPULIST`. Each call has a deadline.

use std::{
    io::{self, Read},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::cpulist::CpuList;

/// Where irqbalance makes its socket.
pub const SOCKET_DIR: &str = "/run/irqbalance";
/// How long one call may take.
const DEADLINE: Duration = Duration::from_secs(2);

/// The running irqbalance's socket in `dir`, if there is one.
pub fn socket_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("irqbalance") && n.ends_with(".sock"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Bans `cpus` from irqbalance's balancing (they keep the lines already on them until
/// irqbalance's next pass, which moves them; the IRQ guard moves them anyway).
pub fn ban(socket: &Path, cpus: &CpuList) -> io::Result<()> {
    tell(socket, &format!("settings cpus {cpus}"))
}

/// Lifts the bans this socket set.
pub fn unban(socket: &Path) -> io::Result<()> {
    tell(socket, "settings cpus NULL")
}

/// The CPUs irqbalance leaves alone now, as it says them (a hex mask).
pub fn banned(socket: &Path) -> io::Result<String> {
    let answer = ask(socket, "setup")?;
    answer
        .split_once("BANNED ")
        .map(|(_, mask)| mask.trim().to_string())
        .ok_or_else(|| {
            io::Error::other(format!(
                "irqbalance's setup answer has no BANNED: {answer:?}"
            ))
        })
}

/// A command with no answer (`settings …`), on a connection of its own, sent with our
/// credentials (irqbalance reads them and obeys only root). Nothing is waited for: irqbalance
/// reads the command when its main loop comes to it, the connection closed or not.
fn tell(socket: &Path, command: &str) -> io::Result<()> {
    connect(socket).and_then(|s| send_with_credentials(&s, command.as_bytes()))
}

/// A command with an answer (`setup`): the answer, up to irqbalance's close (within the
/// deadline).
fn ask(socket: &Path, command: &str) -> io::Result<String> {
    let stream = connect(socket)?;
    send_with_credentials(&stream, command.as_bytes())?;
    let mut answer = String::new();
    (&stream).read_to_string(&mut answer)?;
    Ok(answer)
}

fn connect(socket: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    Ok(stream)
}

fn send_with_credentials(stream: &UnixStream, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: getpid/getuid/getgid cannot fail.
    let creds = unsafe {
        libc::ucred {
            pid: libc::getpid(),
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    };
    let creds_len = std::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(creds_len) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds CMSG_SPACE(ucred) bytes, room for one header and
    // its ucred; CMSG_FIRSTHDR of a msghdr with that buffer points into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_CREDENTIALS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(creds_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::ucred>(), creds);
    }
    // SAFETY: sendmsg on an open socket with a msghdr whose buffers outlive the call.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in for irqbalance's socket: it reads the command and its credentials as
    /// irqbalance does (SO_PASSCRED, recvmsg), and answers `setup`.
    fn stand_in(dir: &Path) -> (PathBuf, std::thread::JoinHandle<Vec<(String, u32)>>) {
        let path = dir.join("irqbalance4242.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on an open socket with an int option.
        unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let handle = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..3 {
                let (s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 500];
                let mut control = [0u8; 64];
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                // SAFETY: as in send_with_credentials, for recvmsg.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = control.len() as _;
                let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
                // SAFETY: the kernel filled the control buffer it was given.
                let uid = unsafe {
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    assert!(!c.is_null() && (*c).cmsg_type == libc::SCM_CREDENTIALS);
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>()).uid
                };
                let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
                if text == "setup" {
                    use std::io::Write;
                    (&s).write_all(b"SLEEP 10 BANNED 00000002").unwrap();
                }
                got.push((text, uid));
            }
            got
        });
        (path, handle)
    }

    #[test]
    fn bans_go_to_the_socket_with_our_credentials_and_setup_says_them() {
        let dir = std::env::temp_dir().join(format!("kt-irqbalance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, server) = stand_in(&dir);
        assert_eq!(socket_in(&dir), Some(path.clone()));
        ban(&path, &CpuList::new([1, 3])).unwrap();
        assert_eq!(banned(&path).unwrap(), "00000002");
        unban(&path).unwrap();
        let got = server.join().unwrap();
        let me = unsafe { libc::getuid() };
        let texts: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["settings cpus 1,3", "setup", "settings cpus NULL"]);
        assert!(got.iter().all(|(_, uid)| *uid == me));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(socket_in(&dir), None);
    }
}
