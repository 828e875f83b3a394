use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{ErrorCode, FrameError};

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected (daemon not running, wrong path, no
    /// permission).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The connection broke before the answer arrived (also after the one automatic
    /// retry on a fresh connection).
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] Arc<io::Error>),
    /// No answer within the call's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error frame.
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The server sent bytes that are not a valid response frame.
    #[error("malformed response: {0}")]
    Frame(#[from] FrameError),
    /// The server sent a valid frame that does not answer the request (wrong kind or
    /// unknown id in order-checked mode).
    #[error("unexpected response: {0}")]
    Unexpected(&'static str),
}

impl ClientError {
    pub(crate) fn lost(e: io::Error) -> ClientError {
        ClientError::ConnectionLost(Arc::new(e))
    }

    pub(crate) fn eof() -> ClientError {
        ClientError::lost(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        ))
    }

    pub(crate) fn connect(path: PathBuf, e: io::Error) -> ClientError {
        ClientError::Connect {
            path,
            source: Arc::new(e),
        }
    }

    /// Whether the call may succeed on a fresh connection (the clients retry such
    /// failures once by themselves).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, ClientError::ConnectionLost(_))
    }
}
