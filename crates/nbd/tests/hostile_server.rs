//! The client against a server that lies: a reply to no request, or a data chunk outside its read,
//! ends the session with an error for every caller, never a hang or a panic. The server here is a
//! script on a real Unix socket speaking just enough of the handshake.
use std::time::Duration;

use datapath_nbd::{proto, Client, NbdError};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};

/// Answers the handshake for an export of `size` with structured replies, then reads one request
/// and returns its cookie, offset and length.
async fn handshake(s: &mut UnixStream, size: u64) -> (u64, u64, u32) {
    s.write_all(&proto::NBDMAGIC.to_be_bytes()).await.unwrap();
    s.write_all(&proto::IHAVEOPT.to_be_bytes()).await.unwrap();
    s.write_all(&proto::FLAG_FIXED_NEWSTYLE.to_be_bytes())
        .await
        .unwrap();
    let _client_flags = s.read_u32().await.unwrap();
    loop {
        assert_eq!(s.read_u64().await.unwrap(), proto::IHAVEOPT);
        let option = s.read_u32().await.unwrap();
        let mut data = vec![0; s.read_u32().await.unwrap() as usize];
        s.read_exact(&mut data).await.unwrap();
        let mut info = Vec::new();
        if option == proto::OPT_GO {
            info.extend_from_slice(&proto::INFO_EXPORT.to_be_bytes());
            info.extend_from_slice(&size.to_be_bytes());
            info.extend_from_slice(&(1u16 | proto::FLAG_SEND_FLUSH).to_be_bytes());
            reply(s, option, proto::REP_INFO, &info).await;
        }
        reply(s, option, proto::REP_ACK, &[]).await;
        if option == proto::OPT_GO {
            break;
        }
    }
    let mut req = [0u8; 28];
    s.read_exact(&mut req).await.unwrap();
    (
        proto::u64_at(&req, 8),
        proto::u64_at(&req, 16),
        proto::u32_at(&req, 24),
    )
}

async fn reply(s: &mut UnixStream, option: u32, kind: u32, data: &[u8]) {
    s.write_all(&proto::OPTION_REPLY_MAGIC.to_be_bytes())
        .await
        .unwrap();
    s.write_all(&option.to_be_bytes()).await.unwrap();
    s.write_all(&kind.to_be_bytes()).await.unwrap();
    s.write_all(&(data.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(data).await.unwrap();
}

/// A structured chunk header for `cookie`.
fn chunk(flags: u16, kind: u16, cookie: u64, length: u32) -> Vec<u8> {
    let mut b = proto::STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    b
}

/// Runs `lie` as the server of one session, and a 4 KiB read at 0 as its client; with `again`,
/// a second read after it (which the liar never answers: only a broken session answers it).
async fn read_from_a_liar(
    lie: impl FnOnce(u64, u64) -> Vec<u8> + Send + 'static,
    again: bool,
) -> (Result<Vec<u8>, NbdError>, Option<Result<Vec<u8>, NbdError>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (cookie, offset, _) = handshake(&mut s, 1 << 20).await;
        s.write_all(&lie(cookie, offset)).await.unwrap();
        // Keep the socket open: the client must not wait for it to close.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let client = Client::connect(&path, "", &[]).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), client.read(0, 4096))
        .await
        .expect("the read hung");
    let next = if again {
        let r = tokio::time::timeout(Duration::from_secs(5), client.read(0, 4096)).await;
        Some(r.expect("the next read hung"))
    } else {
        None
    };
    server.abort();
    (first, next)
}

#[tokio::test]
async fn a_reply_to_no_request_ends_the_session_with_an_error() {
    let (first, next) = read_from_a_liar(
        |cookie, _| {
            chunk(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_NONE,
                cookie + 1000,
                0,
            )
        },
        true,
    )
    .await;
    assert!(matches!(first, Err(NbdError::Closed)), "{first:?}");
    assert!(matches!(next, Some(Err(NbdError::Closed))), "{next:?}");
}

#[tokio::test]
async fn a_data_chunk_outside_its_read_ends_the_session_with_an_error() {
    let (first, next) = read_from_a_liar(
        |cookie, offset| {
            let mut b = chunk(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + 4096,
            );
            b.extend_from_slice(&(offset + 512).to_be_bytes());
            b.extend_from_slice(&[7u8; 4096]);
            b
        },
        true,
    )
    .await;
    assert!(matches!(first, Err(NbdError::Closed)), "{first:?}");
    assert!(matches!(next, Some(Err(NbdError::Closed))), "{next:?}");
}

#[tokio::test]
async fn an_error_chunk_fails_the_read_with_the_server_s_errno_and_message() {
    let (first, _) = read_from_a_liar(
        |cookie, _| {
            let msg = b"disk on fire";
            let mut b = chunk(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_ERROR,
                cookie,
                6 + msg.len() as u32,
            );
            b.extend_from_slice(&5u32.to_be_bytes());
            b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            b.extend_from_slice(msg);
            b
        },
        false,
    )
    .await;
    match first {
        Err(NbdError::Server { errno, message }) => {
            assert_eq!((errno, message.as_str()), (5, "disk on fire"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_read_answered_in_part_is_refused_never_handed_over_with_old_bytes() {
    let (first, _) = read_from_a_liar(
        |cookie, offset| {
            // Half the read, twice: done, yet 2 KiB were never sent.
            let mut b = Vec::new();
            for flags in [0, proto::REPLY_FLAG_DONE] {
                b.extend(chunk(
                    flags,
                    proto::REPLY_TYPE_OFFSET_DATA,
                    cookie,
                    8 + 2048,
                ));
                b.extend_from_slice(&offset.to_be_bytes());
                b.extend_from_slice(&[7u8; 2048]);
            }
            b
        },
        false,
    )
    .await;
    assert!(matches!(first, Err(NbdError::Protocol(_))), "{first:?}");
}
