//! An SMTP sink: a local server that speaks enough of SMTP (RFC 5321) for a
//! real client — EHLO with `AUTH PLAIN LOGIN`, AUTH PLAIN and LOGIN, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT — and records each
//! message as received (the raw RFC 5322 text). Recipients whose local part
//! starts with `bounce` are refused at RCPT with 550 5.1.1; with
//! [`SmtpSink::busy`], the next MAIL commands get 451 4.3.0.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, dot-unstuffed, lines ending in CRLF.
    pub data: String,
    /// `user` when the client authenticated.
    pub user: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    mails: Vec<Mail>,
    busy: u32,
    connections: u32,
}

/// An SMTP server on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct SmtpSink {
    state: Arc<Mutex<State>>,
    port: u16,
    credentials: Option<(String, String)>,
}

impl SmtpSink {
    /// Without AUTH.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(None).await
    }

    /// Requiring AUTH with this user and password.
    pub async fn with_auth(user: &str, password: &str) -> SmtpSink {
        SmtpSink::start_with(Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_with(credentials: Option<(String, String)>) -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let port = listener.local_addr().expect("address").port();
        let sink = SmtpSink {
            state: Arc::default(),
            port,
            credentials,
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(stream).await;
                });
            }
        });
        sink
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The messages accepted, in order.
    pub fn mails(&self) -> Vec<Mail> {
        self.lock().mails.clone()
    }

    /// Connections opened so far (a pooling client opens few).
    pub fn connections(&self) -> u32 {
        self.lock().connections
    }

    /// The next `n` MAIL commands are answered 451 (try again later).
    pub fn busy(&self, n: u32) {
        self.lock().busy = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn session(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        self.lock().connections += 1;
        // Replies go out at once (as a real server's do), not after a
        // delayed ACK.
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
        let mut from: Option<String> = None;
        let mut to: Vec<String> = Vec::new();
        let mut user: Option<String> = None;
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end_matches(['\r', '\n']).to_owned();
            let upper = cmd.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                "250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n".into()
            } else if upper.starts_with("HELO") {
                "250 sink.test\r\n".into()
            } else if upper.starts_with("AUTH PLAIN") {
                let arg = cmd.get(11..).unwrap_or("").trim().to_owned();
                let arg = if arg.is_empty() {
                    write.write_all(b"334 \r\n").await?;
                    line.clear();
                    lines.read_line(&mut line).await?;
                    line.trim().to_owned()
                } else {
                    arg
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(arg)
                    .unwrap_or_default();
                let parts: Vec<String> = decoded
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                match (parts.get(1), parts.get(2)) {
                    (Some(u), Some(p)) if self.accepts(u, p) => {
                        user = Some(u.clone());
                        "235 2.7.0 Authentication successful\r\n".into()
                    }
                    _ => "535 5.7.8 Authentication credentials invalid\r\n".into(),
                }
            } else if upper.starts_with("AUTH LOGIN") {
                let b64 = base64::engine::general_purpose::STANDARD;
                write.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                line.clear();
                lines.read_line(&mut line).await?;
                let u = String::from_utf8_lossy(&b64.decode(line.trim()).unwrap_or_default())
                    .into_owned();
                write.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                line.clear();
                lines.read_line(&mut line).await?;
                let p = String::from_utf8_lossy(&b64.decode(line.trim()).unwrap_or_default())
                    .into_owned();
                if self.accepts(&u, &p) {
                    user = Some(u);
                    "235 2.7.0 Authentication successful\r\n".into()
                } else {
                    "535 5.7.8 Authentication credentials invalid\r\n".into()
                }
            } else if upper.starts_with("MAIL FROM:") {
                let busy = {
                    let mut st = self.lock();
                    let b = st.busy > 0;
                    if b {
                        st.busy -= 1;
                    }
                    b
                };
                if self.credentials.is_some() && user.is_none() {
                    "530 5.7.0 Authentication required\r\n".into()
                } else if busy {
                    "451 4.3.0 Try again later\r\n".into()
                } else {
                    from = Some(angle(&cmd[10..]));
                    to.clear();
                    "250 2.1.0 OK\r\n".into()
                }
            } else if upper.starts_with("RCPT TO:") {
                let rcpt = angle(&cmd[8..]);
                if from.is_none() {
                    "503 5.5.1 MAIL first\r\n".into()
                } else if rcpt.starts_with("bounce") {
                    format!("550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\r\n")
                } else {
                    to.push(rcpt);
                    "250 2.1.5 OK\r\n".into()
                }
            } else if upper == "DATA" {
                if from.is_none() || to.is_empty() {
                    "503 5.5.1 RCPT first\r\n".into()
                } else {
                    write
                        .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut data = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == ".\r\n" || line == ".\n" {
                            break;
                        }
                        let l = line.strip_prefix('.').unwrap_or(&line);
                        data.push_str(l);
                    }
                    let mail = Mail {
                        from: from.take().unwrap_or_default(),
                        to: std::mem::take(&mut to),
                        data,
                        user: user.clone(),
                    };
                    self.lock().mails.push(mail);
                    "250 2.0.0 OK queued\r\n".into()
                }
            } else if upper == "RSET" {
                from = None;
                to.clear();
                "250 2.0.0 OK\r\n".into()
            } else if upper == "NOOP" {
                "250 2.0.0 OK\r\n".into()
            } else if upper == "QUIT" {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.2 Command not recognized\r\n".into()
            };
            write.write_all(reply.as_bytes()).await?;
        }
    }

    fn accepts(&self, user: &str, password: &str) -> bool {
        match &self.credentials {
            Some((u, p)) => u == user && p == password,
            None => true,
        }
    }
}

/// `<a@b> SIZE=…` → `a@b`.
fn angle(s: &str) -> String {
    let s = s.trim();
    match (s.find('<'), s.find('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].to_owned(),
        _ => s.split_whitespace().next().unwrap_or("").to_owned(),
    }
}
