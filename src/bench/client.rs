//! A minimal HTTP/1.1 keep-alive client for load generation: one request at a time per
//! connection, `Content-Length` or chunked responses. Small enough that the client's own cost does
//! not hide the server's on a 2-core machine.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// Extra header lines sent with every request (`Authorization: Bearer …\r\n`).
    extra: String,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The `Server-Timing: app;dur=<ms>` header olps adds: the server's own time, in ms.
    pub server_ms: Option<f64>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(64 * 1024),
            extra: String::new(),
        })
    }

    /// Sends `Authorization: Bearer <secret>` with every request (none when `None`).
    pub fn with_bearer(mut self, secret: Option<&str>) -> Conn {
        self.extra = secret
            .map(|s| format!("Authorization: Bearer {s}\r\n"))
            .unwrap_or_default();
        self
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
            self.host, self.extra
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.read_response().await
    }

    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Response> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.extra,
            body.len()
        );
        if body.len() < 16 * 1024 {
            let mut message = Vec::with_capacity(head.len() + body.len());
            message.extend_from_slice(head.as_bytes());
            message.extend_from_slice(body);
            self.stream.write_all(&message).await?;
        } else {
            self.stream.write_all(head.as_bytes()).await?;
            self.stream.write_all(body).await?;
        }
        self.read_response().await
    }

    /// Reads more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> anyhow::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .context("response head is not UTF-8")?
            .to_string();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let mut length = None;
        let mut chunked = false;
        let mut server_ms = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("bad content-length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            } else if name.eq_ignore_ascii_case("server-timing") {
                server_ms = value
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("dur="))
                    .and_then(|d| d.parse::<f64>().ok());
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[..line_end])?;
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .context("bad chunk size")?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok(Response {
            status,
            body,
            server_ms,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
