#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/): small, readable inputs in each target's
input format, with protobuf records encoded by protoc from proto/, so they follow the schema when it
changes. Run from anywhere: python3 fuzz/seeds.py (needs protoc)."""
import base64, json, os, struct, subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
C = os.path.join(HERE, "corpus")
def enc(msg, text):
    return subprocess.run(["protoc", f"-I{ROOT}/proto", "-I/usr/include", f"--encode=datapath.v1.{msg}",
                           "datapath/v1/flow.proto"], input=text.encode(), capture_output=True, check=True).stdout
def put(target, name, data):
    os.makedirs(f"{C}/{target}", exist_ok=True)
    with open(f"{C}/{target}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
def framed(key, value):
    key = key.encode()
    assert len(key) < 256
    return bytes([len(key)]) + key + value

sd, img, vol, par = "6f1c2b1e-3d4a-4b5c-8d9e-0f1a2b3c4d5e", "1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809", "a0b1c2d3-e4f5-4607-8899-aabbccddeeff", "0d1e2f30-4152-4637-8899-0a1b2c3d4e5f"
job, host, op = "5e2f9c7a-1b3d-4e6f-8a9b-0c1d2e3f4a5b", "7a6b5c4d-3e2f-4109-8877-665544332211", "c3d4e5f6-0718-4293-a4b5-c6d7e8f90a1b"

# volume_metadata
meta = "FORMAT={}\nTYPE={}\nCAP={}\nPUUID={}\nVOLTYPE={}\nLEGALITY={}\nGEN={}\nCTIME={}\nDESCRIPTION={}\n"
put("volume_metadata", "base", meta.format("RAW", "PREALLOCATED", 1 << 30, "", "SHARED", "LEGAL", 0, 1700000000, "base"))
put("volume_metadata", "leaf", meta.format("COW", "SPARSE", 10 << 30, par, "LEAF", "ILLEGAL", 7, 1700000001, "a=b c"))
put("volume_metadata", "crlf", meta.format("COW", "SPARSE", 1, par.upper(), "INTERNAL", "LEGAL", 18446744073709551615, -1, "x").replace("\n", "\r\n"))
put("volume_metadata", "missing-gen", "FORMAT=RAW\nTYPE=SPARSE\nCAP=1\nPUUID=\nVOLTYPE=LEAF\nLEGALITY=LEGAL\nCTIME=0\n")
put("volume_metadata", "bare-cr", meta.format("RAW", "SPARSE", 0, "", "LEAF", "LEGAL", 0, 0, "a\rb"))
put("volume_metadata", "bad-cap", meta.format("RAW", "SPARSE", -1, "", "LEAF", "LEGAL", 0, 0, ""))

# domain_metadata: raw file (first byte not 0), or 0 + a name for create_domain
put("domain_metadata", "metadata", f"SDUUID={sd}\nDESCRIPTION=domain one\nVERSION=1\nCTIME=1700000000\n")
put("domain_metadata", "bad-ctime", f"SDUUID={sd}\nDESCRIPTION=a=b\r\nCTIME=soon\n")
put("domain_metadata", "not-utf8", b"DESCRIPTION=\xff\xfe\n")
put("domain_metadata", "create-name", b"\x00my domain")
put("domain_metadata", "create-newlines", b"\x00a\nCTIME=5\r\nb")

# page_token: 4 bytes of page size (arbitrary's i32), the rest the token
for name, size, token in [("first", 10, ""), ("resume", 10, "dp1.6b3031"), ("negative", -1, ""),
                          ("huge", 5000, "dp1.00"), ("odd", 0, "dp1.6"), ("not-hex", 1, "dp1.zz"),
                          ("not-utf8-key", 1, "dp1.ff"), ("foreign", 1, "garbage")]:
    put("page_token", name, struct.pack("<i", size) + token.encode())

# qemu_progress: progress lines and `qemu-img info --output=json`
put("qemu_progress", "progress", "    (12.34/100%)")
put("qemu_progress", "done", "(100.00/100%)\r")
put("qemu_progress", "over", "(140.00/100%)")
put("qemu_progress", "info", json.dumps({"virtual-size": 1 << 30, "filename": "v", "format": "qcow2",
    "backing-filename": "../x/base", "backing-filename-format": "raw", "full-backing-filename": "/s/base"}, indent=4))
put("qemu_progress", "info-no-backing", '{"virtual-size": 1, "format": "raw"}')
put("qemu_progress", "not-object", '[{"backing-filename": 5}]')

# etcd_records and dpctl_decode: key length, key, value
records = {
    "job": framed(f"/datapath/jobs/{job}", enc("Job", f'''job_id: "{job}" host_id: "{host}" status: JOB_STATUS_RUNNING progress: 42
        entities: "{sd}/{img}/{vol}" created_at {{ seconds: 1700000000 nanos: 5 }} size_bytes: 1073741824
        copy_data {{ source {{ volume {{ storage_domain_id: "{sd}" image_id: "{img}" volume_id: "{vol}" }} }}
                     destination {{ volume {{ storage_domain_id: "{sd}" image_id: "{img}" volume_id: "{par}" }} generation: 3 }} }}
        trace_context {{ key: "traceparent" value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }}''')),
    "flow": framed(f"/datapath/flows/{op}", enc("Flow", f'''operation {{ name: "operations/{op}" metadata {{ kind: OPERATION_KIND_MOVE_DISK progress: 10
        disk {{ storage_domain_id: "{sd}" image_id: "{img}" }} }} }} request_id: "req-1"
        volumes {{ source {{ storage_domain_id: "{sd}" image_id: "{img}" volume_id: "{vol}" }} format: VOLUME_FORMAT_COW
                   state: FLOW_VOLUME_STATE_COPYING job_id: "{job}" host_id: "{host}" expected_generation: 2
                   transient_since {{ seconds: 1700000000 }} last_error {{ code: "FENCED" }} }}
        exclusive_locks {{ storage_domain_id: "{sd}" image_id: "{img}" }} runs: 2''')),
    "volume-lease": framed(f"/datapath/leases/volumes/{sd}/{img}/{vol}", enc("VolumeLease", f'host_id: "{host}" job_id: "{job}" revision: 99')),
    "host": framed(f"/datapath/hosts/{host}", enc("Host", f'''host_id: "{host}" address: "127.0.0.1:7301" storage_domain_ids: "{sd}"
        job_slots: 2 running_jobs: 1 session_lease_id: 7587 registered_at {{ seconds: 1700000000 }}''')),
    "disk-lock": framed(f"/datapath/locks/disks/{sd}/{img}", enc("DiskLock", f'owner: "operations/{op}" readers: "operations/{job}" deleting: true')),
    "generation": framed(f"/datapath/generations/{sd}/{img}/{vol}", b"7"),
    "generation-overflow": framed(f"/datapath/generations/{sd}/{img}/{vol}", b"18446744073709551616"),
    "request": framed("/datapath/requests/7265712d31", op.encode()),
}
for name, data in records.items():
    put("etcd_records", name, data)
for name in ["job", "flow", "volume-lease", "generation", "request"]:
    put("dpctl_decode", name, records[name])
b64 = lambda b: base64.b64encode(b).decode()
rec = records["host"]
put("dpctl_decode", "etcdctl.json", json.dumps({"header": {"cluster_id": 1, "revision": 12},
    "kvs": [{"key": b64(rec[1:rec[0] + 1]), "create_revision": 5, "mod_revision": 9, "version": 2,
             "value": b64(rec[rec[0] + 1:]), "lease": 7587},
            {"key": b64(b"/datapath/config/max_attempts"), "create_revision": 2, "mod_revision": 2,
             "version": 1, "value": b64(b"3")}], "count": 2}))
put("dpctl_decode", "not-a-list.json", '{"kvs": 5}')

# watchdog_report: arbitrary's layout for (message: &str, written: u64, tail: &str) — message
# bytes, the u64 little-endian, the tail, and message's length as the last byte
def report(message, written, tail):
    m = message.encode()
    return m + struct.pack("<Q", written) + tail.encode() + bytes([len(m)])
for name, args in [("glued", ("qemu-img: oops ", 7, "\r")), ("alone", ("", 33554432, "")),
                   ("qemu-error", ("qemu-img: Could not open 'x'", 0, "")),
                   ("killed", ("copier-watchdog: copier killed: its worker is gone", 1, "\n")),
                   ("not-a-number", ("copier-watchdog: bytes-written lots", 5, " ")),
                   ("overflow", ("x", 2**64 - 1, "9")), ("garbage-tail", ("a", 1, "x")),
                   ("marker-twice", ("copier-watchdog: bytes-written ", 12, ""))]:
    put("watchdog_report", name, report(*args))
