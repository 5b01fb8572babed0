//! What rust-zmq 0.9 does not expose, through libzmq's C API: a received
//! frame's connection properties (`zmq_msg_gets`: the ZAP user id, our
//! metadata, the source descriptor) and the `ZMQ_XPUB_MANUAL` option. The
//! `unsafe` code of the server is here, behind a safe API.

use std::ffi::{c_void, CStr};
use std::os::fd::RawFd;

/// One frame received through libzmq's C API.
pub struct RawFrame(zmq_sys::zmq_msg_t);

impl RawFrame {
    /// Receives one frame from `socket`.
    pub fn recv(socket: &mut zmq::Socket, flags: i32) -> zmq::Result<RawFrame> {
        let handle = socket.as_mut_ptr();
        // SAFETY: the message is initialised by zmq_msg_init before any other
        // use and closed on drop; `handle` is a live socket that the caller
        // holds exclusively (`&mut`) for the duration of the call.
        unsafe {
            let mut msg = std::mem::MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
            zmq_sys::zmq_msg_init(msg.as_mut_ptr());
            let mut frame = RawFrame(msg.assume_init());
            if zmq_sys::zmq_msg_recv(&mut frame.0, handle, flags) < 0 {
                return Err(zmq::Error::from_raw(zmq_sys::zmq_errno()));
            }
            Ok(frame)
        }
    }

    pub fn data(&mut self) -> &[u8] {
        // SAFETY: data and size describe the message's own buffer, which
        // lives as long as `self` and is not changed while borrowed.
        unsafe {
            let size = zmq_sys::zmq_msg_size(&self.0);
            if size == 0 {
                return &[];
            }
            std::slice::from_raw_parts(zmq_sys::zmq_msg_data(&mut self.0) as *const u8, size)
        }
    }

    pub fn more(&self) -> bool {
        // SAFETY: reads a flag of an initialised message.
        unsafe { zmq_sys::zmq_msg_more(&self.0) != 0 }
    }

    /// The descriptor of the connection the frame came from.
    pub fn source_fd(&self) -> Option<RawFd> {
        // `zmq_msg_get` property: the descriptor a message came from (zmq.h;
        // not exported by zmq-sys).
        const ZMQ_SRCFD: i32 = 2;
        // SAFETY: ZMQ_SRCFD is a valid property of a received message.
        let fd = unsafe { zmq_sys::zmq_msg_get(&self.0, ZMQ_SRCFD) };
        (fd >= 0).then_some(fd)
    }

    /// A connection property (ZAP user id or metadata), if set and not empty.
    pub fn property(&self, name: &CStr) -> Option<String> {
        // SAFETY: libzmq returns a NUL-terminated string owned by the
        // message's metadata, or NULL; it is copied before `self` can drop.
        unsafe {
            let value = zmq_sys::zmq_msg_gets(&self.0, name.as_ptr());
            if value.is_null() {
                return None;
            }
            CStr::from_ptr(value).to_str().ok().filter(|v| !v.is_empty()).map(str::to_owned)
        }
    }
}

impl Drop for RawFrame {
    fn drop(&mut self) {
        // SAFETY: closes the message initialised in `recv`, once.
        unsafe { zmq_sys::zmq_msg_close(&mut self.0) };
    }
}

/// Turns on `ZMQ_XPUB_MANUAL`: subscriptions reach the application and
/// take effect only when it subscribes the sending connection itself.
pub fn set_xpub_manual(socket: &mut zmq::Socket) -> zmq::Result<()> {
    let on: i32 = 1;
    let handle = socket.as_mut_ptr();
    // SAFETY: an int option with its exact size, on a live socket held
    // exclusively by the caller.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            handle,
            zmq_sys::ZMQ_XPUB_MANUAL as i32,
            (&on as *const i32).cast::<c_void>(),
            std::mem::size_of::<i32>(),
        )
    };
    if rc < 0 {
        // SAFETY: reads libzmq's thread-local errno.
        return Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }));
    }
    Ok(())
}

/// The peer address of a TCP descriptor, for log lines.
pub fn peer_address(fd: RawFd) -> Option<String> {
    // SAFETY: getpeername writes at most `len` bytes into `storage`, and
    // the casts read the family-specific struct it wrote.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) != 0 {
            return None;
        }
        match storage.ss_family as i32 {
            libc::AF_INET => {
                let a: &libc::sockaddr_in = &*(&storage as *const libc::sockaddr_storage).cast();
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(format!("{ip}:{}", u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                let a: &libc::sockaddr_in6 = &*(&storage as *const libc::sockaddr_storage).cast();
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(format!("[{ip}]:{}", u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }
}

/// Ends a TCP connection that libzmq owns, in both directions, without
/// closing the descriptor (libzmq sees the connection end and closes it).
pub fn shutdown_connection(fd: RawFd) {
    // SAFETY: shutdown(2) never invalidates the descriptor; at worst it
    // fails on one that is no longer a socket.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
