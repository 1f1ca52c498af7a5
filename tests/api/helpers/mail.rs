//! A real SMTP server for the tests: Python's `aiosmtpd` (from PyPI, into a venv
//! under the tests' directory the first time), storing what it receives in a
//! Maildir the tests read. It can be stopped and started again on the same port,
//! to stand for a mail server that is down for a while.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{eventually, test_root};

const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// The venv's Python, with aiosmtpd installed (once per test process).
fn python() -> PathBuf {
    static READY: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(python) = &*ready {
        return python.clone();
    }
    let venv = test_root().join("aiosmtpd-venv");
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv (Debian: apt-get install python3-venv)");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let pip = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                AIOSMTPD,
            ])
            .status()
            .expect("pip");
        assert!(pip.success(), "pip install {AIOSMTPD}");
    }
    *ready = Some(python.clone());
    python
}

pub struct MailServer {
    pub port: u16,
    maildir: PathBuf,
    child: Option<Child>,
}

/// One received message, its text and HTML parts decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl MailServer {
    /// Starts on a free loopback port.
    pub fn start(name: &str) -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let maildir = test_root().join("maildirs").join(name);
        let _ = std::fs::remove_dir_all(&maildir);
        // aiosmtpd makes the Maildir, not its parents.
        std::fs::create_dir_all(test_root().join("maildirs")).expect("maildirs");
        let mut server = Self {
            port,
            maildir,
            child: None,
        };
        server.resume();
        server
    }

    /// `SMTP_URL` for it (plain SMTP on loopback).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops it: connections are refused until [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on its port, and waits until it accepts connections.
    pub fn resume(&mut self) {
        let child = Command::new(python())
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.maildir.with_extension("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        let port = self.port;
        devpocket_testkit::poll_blocking(Duration::from_secs(30), || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map(drop)
        })
        .expect("aiosmtpd listening");
    }

    /// Every message received so far, oldest first.
    pub fn received(&self) -> Vec<Mail> {
        read_maildir(&self.maildir.join("new"))
    }

    /// Waits for the `n`th message (from 1) to `to`.
    pub async fn nth_to(&self, to: &str, n: usize) -> Mail {
        eventually(
            Duration::from_secs(30),
            &format!("mail #{n} to {to}"),
            async || {
                let mine: Vec<Mail> = self.received().into_iter().filter(|m| m.to == to).collect();
                mine.get(n - 1)
                    .cloned()
                    .ok_or_else(|| format!("{} so far", mine.len()))
            },
        )
        .await
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `.eml` files of a directory (the outbox directory, or a Maildir's `new/`),
/// oldest first.
pub fn read_maildir(dir: &Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, path)| std::fs::read_to_string(path).ok())
        .map(|raw| parse(&raw))
        .collect()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Splits a message into its headers (continuation lines unfolded) and body.
fn split(raw: &str) -> (String, &str) {
    let raw_head;
    let body;
    if let Some((h, b)) = raw.split_once("\r\n\r\n") {
        (raw_head, body) = (h, b);
    } else {
        let (h, b) = raw.split_once("\n\n").unwrap_or((raw, ""));
        (raw_head, body) = (h, b);
    }
    let head = raw_head
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    (head, body)
}

fn decode(cte: Option<&str>, body: &str) -> String {
    match cte.map(str::to_ascii_lowercase).as_deref() {
        Some("quoted-printable") => {
            let joined = body.replace("=\r\n", "").replace("=\n", "");
            let bytes = joined.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'='
                    && i + 2 < bytes.len()
                    && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
                {
                    out.push(b);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        Some("base64") => {
            use base64::Engine as _;
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => body.to_owned(),
    }
}

fn parse(raw: &str) -> Mail {
    let (head, body) = split(raw);
    let mut mail = Mail {
        to: header(&head, "To").unwrap_or_default().to_owned(),
        subject: header(&head, "Subject").unwrap_or_default().to_owned(),
        text: String::new(),
        html: String::new(),
    };
    let content_type = header(&head, "Content-Type").unwrap_or("text/plain");
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_owned());
    let parts: Vec<&str> = match &boundary {
        Some(b) => body.split(&format!("--{b}")).skip(1).collect(),
        None => Vec::new(),
    };
    for part in parts {
        let part = part.trim_start_matches(['\r', '\n']);
        if part.starts_with("--") {
            continue;
        }
        let (part_head, part_body) = split(part);
        let decoded = decode(header(&part_head, "Content-Transfer-Encoding"), part_body);
        let kind = header(&part_head, "Content-Type").unwrap_or("text/plain");
        if kind.starts_with("text/html") {
            mail.html = decoded;
        } else if kind.starts_with("text/plain") {
            mail.text = decoded;
        }
    }
    if boundary.is_none() {
        mail.text = decode(header(&head, "Content-Transfer-Encoding"), body);
    }
    mail
}
