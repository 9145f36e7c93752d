#!/usr/bin/env bash
# The local S3 the tests use: moto's server on 127.0.0.1 (no credentials needed beyond dummies).
#   infra/local/s3.sh 9000     # then, in another shell:
#   export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
#   export AWS_ENDPOINT_URL=http://127.0.0.1:9000
# Stop it with Ctrl-C (it runs in the foreground, so only this process is stopped).
set -euo pipefail
port="${1:-9000}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
exec "$here/.venv/bin/moto_server" -H 127.0.0.1 -p "$port"
