//! The fixed newstyle handshake: structured replies, metadata contexts, then `NBD_OPT_GO` into
//! transmission. Only what a copier needs; every option the server refuses is an error except
//! structured replies, without which reads still work (as simple replies) but block status does not.
use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    error::{NbdError, Result},
    proto::{self, OptionReply},
};

/// What the handshake settled for the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Its size in bytes.
    pub size: u64,
    /// Its transmission flags (`proto::FLAG_*`).
    pub flags: u16,
    /// Minimum, preferred and maximum block sizes, when the server said.
    pub block_sizes: Option<(u32, u32, u32)>,
    /// Whether replies may be structured.
    pub structured: bool,
    /// The metadata contexts selected, by name, with the id block status reports them under.
    pub contexts: HashMap<String, u32>,
}

/// Runs the handshake on `io` for `export`, selecting `contexts` (e.g. `base:allocation`).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    export: &str,
    contexts: &[&str],
) -> Result<Export> {
    let mut hello = [0u8; 18];
    io.read_exact(&mut hello).await?;
    if proto::u64_at(&hello, 0) != proto::NBDMAGIC || proto::u64_at(&hello, 8) != proto::IHAVEOPT {
        return Err(NbdError::Protocol(
            "not a newstyle NBD server (NBDMAGIC, IHAVEOPT)".into(),
        ));
    }
    let server_flags = proto::u16_at(&hello, 16);
    if server_flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Protocol(
            "the server does not speak fixed newstyle".into(),
        ));
    }
    let client_flags =
        u32::from(proto::FLAG_FIXED_NEWSTYLE | (server_flags & proto::FLAG_NO_ZEROES));
    io.write_all(&client_flags.to_be_bytes()).await?;

    let structured = acked(io, proto::OPT_STRUCTURED_REPLY, &[]).await?;
    let mut selected = HashMap::new();
    if structured && !contexts.is_empty() {
        let data = proto::meta_context_data(export, contexts);
        io.write_all(&proto::option(proto::OPT_SET_META_CONTEXT, &data))
            .await?;
        loop {
            let (reply, data) = option_reply(io, proto::OPT_SET_META_CONTEXT).await?;
            match reply.reply {
                proto::REP_META_CONTEXT if data.len() >= 4 => {
                    let name = String::from_utf8_lossy(&data[4..]).into_owned();
                    selected.insert(name, proto::u32_at(&data, 0));
                }
                proto::REP_ACK => break,
                r if r & proto::REP_FLAG_ERROR != 0 => return Err(refused(reply, &data)),
                r => {
                    return Err(NbdError::Protocol(format!(
                        "unexpected reply {r} to NBD_OPT_SET_META_CONTEXT"
                    )))
                }
            }
        }
    }

    let data = proto::go_data(export, &[proto::INFO_BLOCK_SIZE]);
    io.write_all(&proto::option(proto::OPT_GO, &data)).await?;
    let (mut size, mut flags, mut block_sizes) = (None, 0, None);
    loop {
        let (reply, data) = option_reply(io, proto::OPT_GO).await?;
        match reply.reply {
            proto::REP_INFO if data.len() >= 2 => match proto::u16_at(&data, 0) {
                proto::INFO_EXPORT if data.len() >= 12 => {
                    size = Some(proto::u64_at(&data, 2));
                    flags = proto::u16_at(&data, 10);
                }
                proto::INFO_BLOCK_SIZE if data.len() >= 14 => {
                    block_sizes = Some((
                        proto::u32_at(&data, 2),
                        proto::u32_at(&data, 6),
                        proto::u32_at(&data, 10),
                    ));
                }
                _ => {} // information not asked for or not understood: ignored, as the spec says
            },
            proto::REP_ACK => break,
            r if r & proto::REP_FLAG_ERROR != 0 => return Err(refused(reply, &data)),
            r => {
                return Err(NbdError::Protocol(format!(
                    "unexpected reply {r} to NBD_OPT_GO"
                )))
            }
        }
    }
    let size = size
        .ok_or_else(|| NbdError::Protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into()))?;
    Ok(Export {
        size,
        flags,
        block_sizes,
        structured,
        contexts: selected,
    })
}

/// Sends an option answered by one ACK (true) or one error reply (false: refused, and the
/// handshake goes on without it).
async fn acked<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    option: u32,
    data: &[u8],
) -> Result<bool> {
    io.write_all(&proto::option(option, data)).await?;
    let (reply, data) = option_reply(io, option).await?;
    match reply.reply {
        proto::REP_ACK => Ok(true),
        r if r & proto::REP_FLAG_ERROR != 0 => {
            tracing::debug!(error = %refused(reply, &data), "NBD option refused");
            Ok(false)
        }
        r => Err(NbdError::Protocol(format!(
            "unexpected reply {r} to option {option}"
        ))),
    }
}

/// The largest option reply accepted: the spec bounds strings at 4 KiB.
const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// Reads one option reply to `option`: its header and its data.
async fn option_reply<S: AsyncRead + Unpin>(
    io: &mut S,
    option: u32,
) -> Result<(OptionReply, Vec<u8>)> {
    let mut b = [0u8; OptionReply::SIZE];
    io.read_exact(&mut b).await?;
    let reply = OptionReply::decode(&b)
        .ok_or_else(|| NbdError::Protocol("bad option reply magic".into()))?;
    if reply.option != option {
        return Err(NbdError::Protocol(format!(
            "a reply to option {} while {option} was asked",
            reply.option
        )));
    }
    if reply.length > MAX_OPTION_REPLY {
        return Err(NbdError::Protocol(format!(
            "an option reply of {} bytes",
            reply.length
        )));
    }
    let mut data = vec![0u8; reply.length as usize];
    io.read_exact(&mut data).await?;
    Ok((reply, data))
}

fn refused(reply: OptionReply, data: &[u8]) -> NbdError {
    NbdError::OptionRefused {
        option: reply.option,
        reply: reply.reply,
        message: String::from_utf8_lossy(data).into_owned(),
    }
}
