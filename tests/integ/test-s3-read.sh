#!/usr/bin/env bash
# S3 parents (s3://BUCKET/KEY) against s3rver behind a front that verifies
# every SigV4 signature with botocore (tests/servers/s3-sigv4-front.py):
#  - credentials-file KEY:SECRET, path style: a cold read equals the object,
#    and every request corfs made was signed (x-amz-content-sha256 signed);
#  - KEY:SECRET:TOKEN: the session token travels signed, cold read equal;
#  - AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment of `corfs
#    mount` (no credentials file): cold read equal;
#  - a wrong secret: `corfs mount` fails non-zero at mount time with an
#    auth error naming HTTP 403, nothing stays mounted, and the front did
#    reject the signature (so the front really verifies);
#  - the object replaced by another of the same size while mounted: a cold
#    read fails with EIO (never the new bytes), status parent.state is
#    "changed", blocks already fetched are still served.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/s3.sh"
requires fusermount3 --version
requires jq --version
s3_requires

MiB=1048576 size=$((48 * 1048576))
K1=AKIDCORFSTEST1:secret-one/with+chars
K2=AKIDCORFSTOKEN:secret-two:FwoGZXIvYXdzEJr//token+with/slashes=
K3=AKIDCORFSENV:secret-three
start_s3 "$K1" "$K2" "$K3"
echo "s3rver $S3_UPSTREAM, front $S3_ENDPOINT"

head -c $size /dev/urandom > $T/obj.img
s3_mb "$K1" bkt || fail "create bucket through the front failed"
etag=$(s3_put "$K1" bkt disk.img $T/obj.img) || fail "upload through the front failed"
echo "uploaded 48 MiB, ETag $etag"

# conf FILE [CREDFILE]: a one-disk config for s3://bkt/disk.img.
conf () {
  { echo "[disk d]"
    echo "url = s3://bkt/disk.img"
    echo "s3-endpoint = $S3_ENDPOINT"
    echo "s3-region = us-east-1"
    echo "s3-path-style = true"
    [ -z "${2:-}" ] || echo "credentials-file = $2"
  } > "$1"
}
status () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"; }
mnt=$T/mnt

# cold_read_ok NAME CRED-ARGS...: mount a fresh state, cmp everything, unmount.
cold_read_ok () {
  local name=$1 st=$T/st-$1 pid n0 n1; shift
  n0=$(grep -c '^OK GET' "$S3_FRONT_LOG" || true)
  corfs_mount $st $mnt --config "$@"
  [ "$(stat -c %s $mnt/d)" -eq $size ] || fail "$name: disk size $(stat -c %s $mnt/d), expected $size"
  cmp $mnt/d $T/obj.img || fail "$name: cold read differs from the object"
  [ "$(status $st .parent.state)" = connected ] || fail "$name: parent.state $(status $st .parent.state)"
  [ "$(status $st .counters.fetched_bytes)" -ge $size ] || fail "$name: the read was not cold"
  n1=$(grep -c '^OK GET' "$S3_FRONT_LOG" || true)
  [ $((n1 - n0)) -gt 0 ] || fail "$name: no verified GET reached the front"
  pid=$(daemon_pid $st)
  corfs_unmount $mnt || fail "$name: unmount failed"
  wait_gone "$pid"
  echo "$name: cold read of 48 MiB equal, $((n1 - n0)) verified GETs"
}

### 1. credentials-file KEY:SECRET
printf '%s\n' "$K1" > $T/cred1; chmod 600 $T/cred1
conf $T/c1.conf $T/cred1
cold_read_ok keyfile $T/c1.conf
grep -qE "^OK GET .* key=${K1%%:*} range=bytes=[0-9]+-[0-9]+ if-match=\"" "$S3_FRONT_LOG" \
  || fail "no ranged GET with If-Match signed with ${K1%%:*} in the front log"
grep '^DENY' "$S3_FRONT_LOG" && fail "the front denied requests of a correctly configured corfs"
echo "libcurl's signed headers: $(grep -m1 "^OK GET .* key=${K1%%:*} " "$S3_FRONT_LOG" | grep -o 'signed=[^ ]*')"

### 2. session token: KEY:SECRET:TOKEN (the front requires the token, signed)
printf '%s\n' "$K2" > $T/cred2; chmod 600 $T/cred2
conf $T/c2.conf $T/cred2
cold_read_ok token $T/c2.conf
grep -qE "^OK GET .* key=${K2%%:*} .* signed=[^ ]*x-amz-security-token" "$S3_FRONT_LOG" \
  || fail "session-token requests were not signed with x-amz-security-token"

### 3. AWS_* environment variables, no credentials file
conf $T/c3.conf
key3=${K3%%:*} secret3=${K3#*:}
AWS_ACCESS_KEY_ID=$key3 AWS_SECRET_ACCESS_KEY=$secret3 cold_read_ok env $T/c3.conf
grep -q "^OK GET .* key=$key3 " "$S3_FRONT_LOG" || fail "no GET signed with the env key"

### 4. a wrong secret: mount fails at mount time with HTTP 403
printf '%s\n' "${K1%%:*}:not-the-secret" > $T/cred4
conf $T/c4.conf $T/cred4
st=$T/st-bad
mkdir -p $st $mnt
cleanup_fn _force_unmount $st $mnt
nd0=$(grep -c '^DENY .*SignatureDoesNotMatch' "$S3_FRONT_LOG" || true)
rc=0
timeout 60 "$CORFS" mount --state $st --stream=off --config $T/c4.conf $mnt > $T/bad.out 2> $T/bad.err || rc=$?
echo "wrong secret: corfs mount exit $rc, stderr: $(cat $T/bad.err)"
[ $rc -ne 0 ] || fail "corfs mount with a wrong secret succeeded"
[ $rc -ne 124 ] || fail "corfs mount with a wrong secret hung (timeout 60 s)"
grep -q 403 $T/bad.err || fail "the mount error does not name HTTP 403: $(cat $T/bad.err)"
is_mounted $mnt && fail "something is mounted after the refused mount"
[ -f $st/corfs.pid ] && alive "$(cat $st/corfs.pid)" && fail "a daemon runs after the refused mount"
nd1=$(grep -c '^DENY .*SignatureDoesNotMatch' "$S3_FRONT_LOG" || true)
[ $((nd1 - nd0)) -gt 0 ] || fail "the front did not reject the wrong signature"

### 5. the object is replaced (same size, other bytes) while mounted
st=$T/st-chg
corfs_mount $st $mnt --config $T/c1.conf
cmp <(head -c $MiB $mnt/d) <(head -c $MiB $T/obj.img) || fail "changed: first MiB differs"
head -c $size /dev/urandom > $T/new.img
etag2=$(s3_put "$K1" bkt disk.img $T/new.img) || fail "replacing the object failed"
[ "$etag2" != "$etag" ] || fail "s3rver gave the new object the same ETag $etag"
rc=0
timeout 60 dd if=$mnt/d of=$T/cold bs=$MiB skip=24 count=1 status=none 2> $T/cold.err || rc=$?
echo "cold read after the replacement: rc $rc: $(cat $T/cold.err)"
[ $rc -ne 124 ] || fail "the cold read after the replacement hung"
[ $rc -ne 0 ] || fail "a cold read after the object changed succeeded"
grep -q "Input/output error" $T/cold.err || fail "expected EIO, got: $(cat $T/cold.err)"
if [ -s $T/cold ]; then
  cmp -s $T/cold <(dd if=$T/new.img bs=$MiB skip=24 count=1 status=none | head -c "$(stat -c %s $T/cold)") \
    && fail "the read returned the NEW object's bytes"
fi
ps=$(status $st .parent.state)
echo "parent.state $ps, last_error: $(status $st .parent.last_error)"
[ "$ps" = changed ] || fail "parent.state is '$ps' after the object changed (expected changed)"
cmp <(head -c $MiB $mnt/d) <(head -c $MiB $T/obj.img) || fail "present blocks changed after the object changed"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount after the change failed"
wait_gone "$pid"
echo "PASS"
