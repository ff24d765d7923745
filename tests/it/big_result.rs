//! A result of megabytes, served with a Content-Length, chunked without one, and gzip-encoded
//! (when reqwest reports no length), reaches the file sink intact: the envelope's `result` is
//! the served one byte for byte. And the body cap holds while such a body is read.

use std::time::Duration;

use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{run_once, text, watch, watcher_config};

const SECRET: &str = "SK-big-result";
const SCENES: usize = 20_000;

/// How the result is sent.
#[derive(Clone, Copy, Debug)]
enum Framing {
    ContentLength,
    Chunked,
    /// `Content-Encoding: gzip`, chunked.
    Gzip,
}

/// A result of `SCENES` scenes (over 4 MB), with escapes, non-ASCII text and odd spacing that
/// must all survive unchanged.
fn big_result() -> String {
    let mut s = String::from(
        "{\"indexId\":20, \"sceneSummaryInfo\":{\"lastAnalyzedAt\":\"2026-04-17T10:30:00\",\"analyzedSceneIds\":null},\n \"sceneSummaries\":[",
    );
    for i in 1..=SCENES {
        if i > 1 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"scene\":{i},\"startMs\":{},\"endMs\":{},\"sceneSummary\":{{\"description\":\"Scene {i}: a nurse says \\\"wait\\\" \\u00e9 in the corridor, 한국어 텍스트, as the rain taps against the window of the quiet hospital ward at night; {i}.\",\"metadataChangedAfterSummary\":{},\"analyzedAt\":\"2026-04-17T09:30:00\"}}}}",
            i * 1000,
            i * 1000 + 900,
            i % 1000 == 0,
        ));
    }
    s.push_str("]}");
    s
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, slot) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `data` as a gzip member of stored (uncompressed) deflate blocks: valid gzip without a
/// compressor.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 16);
    for c in body.chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// An HTTP/1.1 server on loopback answering every status call "completed" and every other call
/// with `result` in its envelope, framed as `framing`; one request per connection.
async fn serve(result: String, framing: Framing) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = format!("{{\"code\":\"0\",\"message\":\"success\",\"result\":{result}}}");
    let answer = std::sync::Arc::new(match framing {
        Framing::ContentLength => {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            a.extend_from_slice(body.as_bytes());
            a
        }
        Framing::Chunked => {
            let mut a = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
            a.extend_from_slice(&chunked(body.as_bytes()));
            a
        }
        Framing::Gzip => {
            let mut a = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
            a.extend_from_slice(&chunked(&gzip_stored(body.as_bytes())));
            a
        }
    });
    let status = {
        let b = r#"{"code":"0","message":"success","result":{"status":"SUMMARIZE_COMPLETED"}}"#;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
            b.len()
        )
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (answer, status) = (answer.clone(), status.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let out: &[u8] = if path.ends_with("/status") {
                    status.as_bytes()
                } else {
                    &answer
                };
                let _ = sock.write_all(out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_reaches_the_file_sink_intact_however_it_is_framed() {
    let result = big_result();
    assert!(result.len() > 4_000_000, "{}", result.len());
    for framing in [Framing::ContentLength, Framing::Chunked, Framing::Gzip] {
        let url = serve(result.clone(), framing).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let config = watcher_config(&url, dir.path(), &watch("10", "20", None, "asset"))
            .replace("timeout = \"2s\"", "timeout = \"30s\"");
        std::fs::write(&cfg, config).unwrap();
        let out = run_once(&cfg, SECRET).await;
        assert_eq!(out.status.code(), Some(0), "{framing:?}: {}", text(&out));
        let file = std::fs::read(dir.path().join("results/w/1/10/20.json")).unwrap();
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope<'a> {
            scene_count: usize,
            #[serde(borrow)]
            result: &'a RawValue,
        }
        let env: Envelope<'_> = serde_json::from_slice(&file).unwrap();
        assert_eq!(env.scene_count, SCENES, "{framing:?}");
        assert!(
            env.result.get() == result,
            "{framing:?}: the result changed on its way"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_cap_holds_for_a_large_body_without_a_length() {
    use scenewatch::ncp::{
        Client, ClientOptions, Credentials, ErrorOrigin, Generation, Target, Verdict,
    };
    let result = big_result();
    for framing in [Framing::Chunked, Framing::Gzip, Framing::ContentLength] {
        let url = serve(result.clone(), framing).await;
        let mut o = ClientOptions::new(url, Credentials::new("AK", SECRET));
        o.max_body_bytes = 1 << 20;
        o.timeout = Duration::from_secs(30);
        let client = Client::new(o).unwrap();
        let target = Target {
            workspace: "w".into(),
            project_id: "1".into(),
            asset_id: "10".into(),
            index_id: "20".into(),
            scene_summary_id: None,
        };
        let v = client.result(Generation::Asset, &target).await;
        let Verdict::Retryable { error, .. } = v else {
            panic!("{framing:?}: {v:?}")
        };
        assert_eq!(error.origin, ErrorOrigin::TooLarge, "{framing:?}: {error}");
        assert!(
            error.message.contains("api.max_body_bytes = 1048576"),
            "{error}"
        );
    }
}
