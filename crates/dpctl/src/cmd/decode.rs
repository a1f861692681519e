//! `dpctl decode`: makes etcd readable. etcd holds protobuf records; piped the JSON of
//! `etcdctl get --prefix /datapath/ -w json`, this prints every key with its revisions and its value
//! decoded by its place in the key layout (proto3 JSON for records, text for `config/`).
use std::io::Read as _;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use datapath_coord::keys::{Keys, DEFAULT_PREFIX};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{json, Value};

use crate::output::pool;

/// `decode` flags.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// The services' etcd key prefix.
    #[arg(long, env = "DATAPATH_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    etcd_prefix: String,
}

impl DecodeArgs {
    /// Reads etcdctl's JSON on stdin and prints one JSON line per key.
    pub fn run(self) -> anyhow::Result<()> {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("read stdin")?;
        for line in decode(&Keys::new(&self.etcd_prefix), &input)? {
            println!("{line}");
        }
        Ok(())
    }
}

/// Every key of an `etcdctl get -w json` answer, decoded.
pub fn decode(keys: &Keys, etcdctl_json: &str) -> anyhow::Result<Vec<Value>> {
    let answer: Value = serde_json::from_str(etcdctl_json.trim())
        .context("stdin is not JSON: pipe `etcdctl get --prefix KEY -w json` into dpctl decode")?;
    let Some(kvs) = answer.get("kvs") else {
        return Ok(Vec::new());
    };
    let Some(kvs) = kvs.as_array() else {
        bail!("`kvs` is not a list: is this etcdctl's -w json output?");
    };
    kvs.iter().map(|kv| decode_kv(keys, kv)).collect()
}

fn bytes(kv: &Value, field: &str) -> anyhow::Result<Vec<u8>> {
    let text = kv.get(field).and_then(Value::as_str).unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .with_context(|| format!("{field} is not base64"))
}

fn decode_kv(keys: &Keys, kv: &Value) -> anyhow::Result<Value> {
    let key = String::from_utf8_lossy(&bytes(kv, "key")?).into_owned();
    let raw = bytes(kv, "value")?;
    let value = match keys.kind_of(&key).and_then(|k| k.message_name()) {
        Some(name) => {
            let descriptor = pool()?
                .get_message_by_name(name)
                .with_context(|| format!("find {name}"))?;
            let message = DynamicMessage::decode(descriptor, raw.as_slice())
                .with_context(|| format!("{key} does not hold a {name}"))?;
            message
                .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
                .with_context(|| format!("render {key}"))?
        }
        None => Value::String(String::from_utf8_lossy(&raw).into_owned()),
    };
    Ok(json!({
        "key": key,
        "createRevision": kv.get("create_revision").cloned().unwrap_or(Value::Null),
        "modRevision": kv.get("mod_revision").cloned().unwrap_or(Value::Null),
        "lease": kv.get("lease").cloned().unwrap_or(Value::Null),
        "value": value,
    }))
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use datapath_api::pb;
    use prost::Message as _;

    use super::*;

    #[test]
    fn records_are_decoded_by_their_key() {
        let keys = Keys::new("/dp/");
        let job = pb::Job {
            job_id: "j1".into(),
            progress: 42,
            ..Default::default()
        };
        let input = json!({"kvs": [
            {"key": STANDARD.encode("/dp/jobs/j1"), "value": STANDARD.encode(job.encode_to_vec()), "mod_revision": 7},
            {"key": STANDARD.encode("/dp/config/data_operations_by_hsm"), "value": STANDARD.encode("true")},
        ]});
        let out = decode(&keys, &input.to_string()).unwrap();
        assert_eq!(out[0]["key"], "/dp/jobs/j1");
        assert_eq!(out[0]["value"]["progress"], 42);
        assert_eq!(out[0]["modRevision"], 7);
        assert_eq!(out[1]["value"], "true");
        assert!(decode(&keys, "not json").is_err());
        assert!(decode(&keys, "{}").unwrap().is_empty());
    }
}
