//! What can go wrong talking to an NBD server.
use thiserror::Error;

/// An NBD client's error.
#[derive(Debug, Error)]
pub enum NbdError {
    /// The socket failed.
    #[error("NBD socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server said something the protocol does not allow (the session is unusable).
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server refused an option of the handshake.
    #[error("the NBD server refused option {option} (reply {reply:#x}): {message}")]
    OptionRefused {
        /// `NBD_OPT_*`.
        option: u32,
        /// The error reply, bit 31 set.
        reply: u32,
        /// The server's message, if any.
        message: String,
    },
    /// The server failed a request.
    #[error("the NBD server failed the request (errno {errno}): {message}")]
    Server {
        /// The error, an errno value (`NBD_EIO` = 5, …).
        errno: u32,
        /// The server's message, if any.
        message: String,
    },
    /// The export cannot do what was asked (a write to a read-only export, block status without
    /// a negotiated context, …); nothing was sent.
    #[error("the NBD export does not support this: {0}")]
    Unsupported(String),
    /// The session ended before the reply came.
    #[error("the NBD session ended")]
    Closed,
}

/// This crate's results.
pub type Result<T, E = NbdError> = std::result::Result<T, E>;
