//! SSH to machines with russh: pinned host keys, per-environment client keys,
//! connect/handshake timeouts, keepalive and `TCP_NODELAY`; exec channels that are
//! always drained (with russh an unread channel stalls the whole connection), and
//! commands whose output is read up to a byte cap and a deadline, never further.

use std::sync::Arc;
use std::time::Duration;

use rand::TryRng;
use russh::client::{self, Handle};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::net::TcpStream;

use crate::deps::Deps;
use crate::model::{MachineAccess, MachineKeys};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(15);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
pub const KEEPALIVE_MAX: usize = 3;
/// How long closing a channel we stopped reading may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the machine's SSH host key does not match the pinned one (presented {presented}, expected {expected}): refusing to connect"
    )]
    HostKeyMismatch { presented: String, expected: String },
    #[error("no SSH server answered at {0}")]
    NoHostKey(String),
    #[error("the SSH handshake or authentication timed out")]
    HandshakeTimeout,
    #[error("the machine refused our SSH key for user {0}")]
    AuthRejected(String),
    #[error("bad key material: {0}")]
    Key(String),
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
    #[error("the command timed out")]
    CommandTimeout,
    #[error("the command was stopped")]
    Stopped,
    #[error("the machine printed more than {0} bytes; the command was stopped")]
    OutputTooLarge(usize),
}

/// Accepts exactly the pinned host key.
struct PinnedHost {
    expected: PublicKey,
}

impl client::Handler for PinnedHost {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        server: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let server = server.public_key();
        // Compare key material only: `PublicKey` equality includes the comment.
        if server.key_data() == self.expected.key_data() {
            Ok(true)
        } else {
            Err(SshError::HostKeyMismatch {
                presented: server.fingerprint(HashAlg::Sha256).to_string(),
                expected: self.expected.fingerprint(HashAlg::Sha256).to_string(),
            })
        }
    }
}

/// Takes note of the host key a server presents, and goes no further.
struct FirstContact {
    presented: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl client::Handler for FirstContact {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        server: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let Ok(mut presented) = self.presented.lock() {
            *presented = Some(server.public_key().clone());
        }
        Ok(false)
    }
}

/// The host key the SSH server at `host:port` presents (`ssh-ed25519 AAAA…`), for
/// its owner to confirm by its fingerprint before it is trusted: the connection
/// ends at the key exchange, nothing is authenticated.
pub async fn presented_host_key(
    host: &str,
    port: u16,
    connect_timeout: Duration,
    auth_timeout: Duration,
) -> Result<String, SshError> {
    let addr = format!("{host}:{port}");
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| SshError::ConnectTimeout(addr.clone()))?
        .map_err(|source| SshError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let presented = Arc::new(std::sync::Mutex::new(None));
    let handler = FirstContact {
        presented: presented.clone(),
    };
    let config = Arc::new(client::Config::default());
    let exchange = client::connect_stream(config, tcp, handler);
    // Refusing the key ends the exchange with an error: the key is what we came for.
    let _ = tokio::time::timeout(auth_timeout, exchange)
        .await
        .map_err(|_| SshError::HandshakeTimeout)?;
    let key = presented
        .lock()
        .ok()
        .and_then(|mut k| k.take())
        .ok_or(SshError::NoHostKey(addr))?;
    key.to_openssh().map_err(|e| SshError::Key(e.to_string()))
}

/// `SHA256:…`, as `ssh-keygen -lf` and `ssh` print a key's fingerprint.
pub fn fingerprint(public_key: &str) -> Result<String, SshError> {
    let key = PublicKey::from_openssh(public_key.trim())
        .map_err(|e| SshError::Key(format!("public key: {e}")))?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

/// Generates an ed25519 key pair: (private key in OpenSSH PEM, `ssh-ed25519 …` line).
pub fn generate_keypair(comment: &str) -> Result<(String, String), SshError> {
    let mut seed = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| SshError::Key(format!("the system's random number generator failed: {e}")))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| SshError::Key(e.to_string()))?
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| SshError::Key(e.to_string()))?;
    Ok((private, public))
}

/// Why a private key someone sent cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyRefused {
    #[error("is encrypted: send its passphrase too")]
    NeedsPassphrase,
    #[error("cannot be decrypted with that passphrase")]
    WrongPassphrase,
    #[error("is not a private key in OpenSSH or PEM format")]
    Unreadable,
}

/// A private key as sent (OpenSSH or PEM, encrypted with `passphrase` or not), as
/// DevPocket keeps it: unencrypted OpenSSH (to be sealed at rest), and its
/// `ssh-… AAAA…` public line.
pub fn usable_private_key(
    text: &str,
    passphrase: Option<&str>,
) -> Result<(String, String), KeyRefused> {
    use russh::keys::{Error, decode_secret_key};
    let key = match decode_secret_key(text, passphrase) {
        Ok(key) => key,
        Err(Error::KeyIsEncrypted) => return Err(KeyRefused::NeedsPassphrase),
        Err(_) => {
            return Err(match decode_secret_key(text, None) {
                Err(Error::KeyIsEncrypted) => KeyRefused::WrongPassphrase,
                _ => KeyRefused::Unreadable,
            });
        }
    };
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|_| KeyRefused::Unreadable)?
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|_| KeyRefused::Unreadable)?;
    Ok((private, public))
}

/// Fresh host and client key pairs for one machine.
pub fn generate_machine_keys(environment: &str) -> Result<MachineKeys, SshError> {
    let (host_private, host_public) = generate_keypair(&format!("devpocket-host-{environment}"))?;
    let (user_private, user_public) = generate_keypair(&format!("devpocket-{environment}"))?;
    Ok(MachineKeys {
        host_private,
        host_public,
        user_private,
        user_public,
    })
}

/// An authenticated SSH connection to one machine.
pub struct SshSession {
    handle: Handle<PinnedHost>,
}

/// Why a one-off command ([`run_once`]) gave no output.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    #[error("the machine cannot be reached")]
    Unreachable(#[source] SshError),
    #[error("the command on the machine failed")]
    Failed(#[source] SshError),
}

/// Runs one of the server's commands on the machine on a connection of its own
/// (counted as `purpose`), bounded as [`SshSession::run`], then disconnects.
pub async fn run_once(
    deps: &Deps,
    purpose: &'static str,
    machine: &MachineAccess,
    keys: &MachineKeys,
    command: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<ExecOutput, OnceError> {
    let session = SshSession::connect(machine, &keys.user_private).await;
    deps.ssh_connect(purpose, session.is_ok());
    let session = session.map_err(OnceError::Unreachable)?;
    let out = session.run(command, timeout, max_bytes).await;
    session.close().await;
    out.map_err(OnceError::Failed)
}

/// Given each piece of a command's output (stdout and stderr alike) as it arrives.
pub type OnData = Box<dyn FnMut(&[u8]) + Send>;

/// What a command's output is for besides its result ([`SshSession::run_live`]).
pub struct Live {
    pub on_data: Option<OnData>,
    /// Ends the command early when it resolves (or its sender is dropped).
    pub stop: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Whether the output is also kept for the result (else only counted).
    pub keep: bool,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            on_data: None,
            stop: None,
            keep: true,
        }
    }
}

/// What an exec channel produced.
#[derive(Debug)]
pub struct ExecOutput {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl SshSession {
    pub async fn connect(machine: &MachineAccess, private_key: &str) -> Result<Self, SshError> {
        Self::connect_within(machine, private_key, CONNECT_TIMEOUT, AUTH_TIMEOUT).await
    }

    /// [`Self::connect`] with timeouts of the caller's: for the TCP connection, and
    /// for the handshake and authentication.
    pub async fn connect_within(
        machine: &MachineAccess,
        private_key: &str,
        connect_timeout: Duration,
        auth_timeout: Duration,
    ) -> Result<Self, SshError> {
        let expected = PublicKey::from_openssh(machine.host_public_key.trim())
            .map_err(|e| SshError::Key(format!("pinned host key: {e}")))?;
        let key = PrivateKey::from_openssh(private_key)
            .map_err(|e| SshError::Key(format!("client key: {e}")))?;
        let rsa = matches!(key.algorithm(), russh::keys::Algorithm::Rsa { .. });
        let addr = format!("{}:{}", machine.host, machine.port);
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| SshError::ConnectTimeout(addr.clone()))?
            .map_err(|source| SshError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Keystrokes must not wait for Nagle.
        tcp.set_nodelay(true).map_err(|source| SshError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        });
        let user = machine.user.clone();
        let handshake = async move {
            let mut handle = client::connect_stream(config, tcp, PinnedHost { expected }).await?;
            // An RSA key signs with the best hash the server takes (OpenSSH
            // refuses SHA-1 signatures).
            let hash = if rsa {
                handle.best_supported_rsa_hash().await?.flatten()
            } else {
                None
            };
            let auth = handle
                .authenticate_publickey(
                    user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await?;
            if !auth.success() {
                return Err(SshError::AuthRejected(user));
            }
            Ok(handle)
        };
        let handle = tokio::time::timeout(auth_timeout, handshake)
            .await
            .map_err(|_| SshError::HandshakeTimeout)??;
        Ok(Self { handle })
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Opens an exec channel for one of the server's own commands and returns it
    /// for the caller to drain.
    ///
    /// sshd runs the command with the user's login shell (`bash -c COMMAND`), and a
    /// bash built with `SSH_SOURCE_BASHRC` (Debian's, Ubuntu's) sources `~/.bashrc`
    /// for it when `SSH_CLIENT` is set and the shell level is below 2 — that is, a
    /// tenant's start-up file would run before every sample and could print into it.
    /// Sending `SHLVL=1` makes that shell level 2, so bash skips its start-up files;
    /// the machine's sshd accepts the variable (`AcceptEnv SHLVL`), and one that does
    /// not just ignores it. PTY sessions ([`Self::pty`]) do not send it: a terminal
    /// gets the user's normal shell start-up.
    pub async fn exec(&self, command: &str) -> Result<russh::Channel<client::Msg>, SshError> {
        let channel = self.handle.channel_open_session().await?;
        channel.set_env(false, "SHLVL", "1").await?;
        channel.exec(true, command).await?;
        Ok(channel)
    }

    /// Opens a PTY channel of `cols`×`rows` running `command`.
    pub async fn pty(
        &self,
        command: &str,
        cols: u32,
        rows: u32,
    ) -> Result<russh::Channel<client::Msg>, SshError> {
        let channel = self.handle.channel_open_session().await?;
        channel
            .request_pty(false, "xterm-256color", cols, rows, 0, 0, &[])
            .await?;
        channel.exec(true, command).await?;
        Ok(channel)
    }

    /// Runs a command to completion and collects its output: at most `max_bytes`
    /// of stdout and stderr together, for at most `timeout`. Past either, the
    /// channel is closed (the connection stays usable) and the command's output is
    /// an error, never a partial result.
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<ExecOutput, SshError> {
        self.run_live(command, timeout, max_bytes, Live::default())
            .await
    }

    /// [`Self::run`], telling `live` what the command prints as it prints it, and
    /// ending it early when `live.stop` says so (`SshError::Stopped`).
    pub async fn run_live(
        &self,
        command: &str,
        timeout: Duration,
        max_bytes: usize,
        mut live: Live,
    ) -> Result<ExecOutput, SshError> {
        let (mut reader, writer) = self.exec(command).await?.split();
        let keep = live.keep;
        let on_data = &mut live.on_data;
        let collect = async {
            let mut out = ExecOutput {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            let mut read = 0usize;
            // Exit status may arrive after EOF: read until the channel closes.
            while let Some(msg) = reader.wait().await {
                let (buffer, data) = match msg {
                    ChannelMsg::Data { data } => (&mut out.stdout, data),
                    ChannelMsg::ExtendedData { data, .. } => (&mut out.stderr, data),
                    ChannelMsg::ExitStatus { exit_status } => {
                        out.status = Some(exit_status);
                        continue;
                    }
                    ChannelMsg::Close => break,
                    _ => continue,
                };
                read += data.len();
                if read > max_bytes {
                    return Err(SshError::OutputTooLarge(max_bytes));
                }
                if let Some(on_data) = on_data.as_mut() {
                    on_data(&data);
                }
                if keep {
                    buffer.extend_from_slice(&data);
                }
            }
            Ok(out)
        };
        let stop = async {
            match live.stop.take() {
                Some(stop) => {
                    let _ = stop.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let result = tokio::select! {
            collected = tokio::time::timeout(timeout, collect) => match collected {
                Ok(Ok(out)) => return Ok(out),
                Ok(Err(e)) => e,
                Err(_) => SshError::CommandTimeout,
            },
            () = stop => SshError::Stopped,
        };
        // Stop reading first: the connection's loop then discards what is still
        // in flight for this channel instead of waiting for us to take it, so the
        // close below cannot be stuck behind it. sshd answers the close by
        // closing the command's pipes: a command printing forever dies of SIGPIPE.
        drop(reader);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
        Err(result)
    }

    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "bye", "en")
            .await;
    }
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip() {
        let (private, public) = generate_keypair("t").expect("keys");
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(public.starts_with("ssh-ed25519 "));
        let parsed = PrivateKey::from_openssh(&private).expect("parse");
        let line = PublicKey::from_openssh(&public).expect("parse public");
        assert_eq!(parsed.public_key().key_data(), line.key_data());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
