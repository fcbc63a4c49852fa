#!/usr/bin/env bash
# libvirt with Debian's defaults runs a guest on a corfs disk.  The stock
# qemu.conf is used as installed: QEMU runs as libvirt-qemu, and libvirt's
# dynamic ownership chowns the disk (and kernel, initrd, serial log) to it
# while the domain runs.  corfs is mounted with -o allow_other (the one
# option a hypervisor host needs: without it no user but the daemon's may
# enter the mount).
#
# The test starts its own libvirtd (CI has no systemd) and virtlogd (the
# stock qemu.conf sends QEMU's output through it), in a private mount
# namespace whose /run, /var/{lib,log,cache}/libvirt and domain, network
# and pool definitions (/etc/libvirt/qemu, /etc/libvirt/storage) are
# empty copies in the scratch directory: the host's libvirt, if any, is
# neither seen nor touched, and /etc/libvirt/*.conf stay Debian's.  The
# private libvirtd.conf only moves the sockets (unix_sock_dir) into the
# scratch directory, where virsh reaches them with qemu:///system?socket=.
#
# A transient domain (virsh create, type 'qemu': TCG) boots the project's
# test guest (scripts/build-guest) with its disk a corfs file, raw,
# cache='none', virtio; the guest writes $count checksummed records, each
# durable before it is ACKed on the serial console, then powers off, and
# the domain goes away.  Checked: the disk is libvirt-qemu's while the
# domain runs, and root's again after; `virsh domblkinfo` gives the
# disk's size as capacity; `virsh blockresize` grows the disk by 64 MiB
# while the domain runs (domblkinfo, stat and `corfs status --json` give
# the new size, `corfs dirty` lists the new range as changed) and fails on
# a shrink, which corfs refuses (the size unchanged); an incremental
# backup taken while the domain is paused (`corfs checkpoint`, the extents
# `corfs dirty --since` lists) holds every record ACKed before the pause,
# and the next incremental on top of it every record (README "libvirt");
# after libvirtd stops, an unmount and a remount, the disk keeps its grown
# size and every ACKed record.
# LIBVIRT_TEST_LOG=FILE: libvirtd's debug log (qemu driver, commands) there.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires qemu-system-x86_64 --version
requires python3 --version
requires unshare --version
for t in libvirtd virtlogd virsh; do
  command -v $t >/dev/null 2>&1 || skip "missing: $t (scripts/install-deps installs libvirt-daemon-system)"
done
id libvirt-qemu >/dev/null 2>&1 || skip "no user libvirt-qemu (libvirt-daemon-system is not installed)"
[ "$(id -u)" = 0 ] || skip "needs root (a system libvirtd)"
unshare -m true 2>/dev/null || skip "cannot create a mount namespace (unshare -m)"

start_time=$(date +%s)
note () { echo "[$(( $(date +%s) - start_time ))s] $*"; }
MiB=1048576
size=$((64 * MiB)) count=40
build_test_guest
note "guest: $guest ($(cat "$guest/kernel" 2>/dev/null))"

# QEMU (libvirt-qemu) must reach the kernel, the initrd, the serial log and
# the disk: the scratch directory is traversable (mktemp makes it 0700).
chmod 755 "$T"
lv=$T/lv
mkdir -p "$lv/sock" "$lv/etc-qemu" "$lv/etc-storage"
# libvirt's state directories, private: the host's directory tree (two
# levels, with owners and modes) without its files (images, logs, caches).
for d in /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p "$lv$d"
  [ -d "$d" ] || continue
  ( cd "$d" && find . -maxdepth 2 -type d -printf '%m %U %G %P\0' ) |
    while IFS=' ' read -r -d '' m u g p; do
      mkdir -p "$lv$d/$p"; chown "$u:$g" "$lv$d/$p"; chmod "$m" "$lv$d/$p"
    done
done
cp "$guest/vmlinuz" "$guest/initrd.img" "$lv/"
chmod 644 "$lv/vmlinuz" "$lv/initrd.img"

# The corfs disk: a 64 MiB parent of random data, allow_other.
head -c $size /dev/urandom > "$T/parent.img"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" -o allow_other --disk d="file://$T/parent.img"
[ "$(stat -c %a "$mnt")" = 755 ] || fail "the mount's root is mode $(stat -c %a "$mnt"), expected 755"
disk=$mnt/d
[ "$(stat -c '%U %a' "$disk")" = "root 600" ] || fail "new disk: $(stat -c '%U %a' "$disk"), expected root 600"

cat > "$lv/libvirtd.conf" <<EOF
# Only the sockets move (into the test's scratch directory).
unix_sock_dir = "$lv/sock"
EOF
# inside.sh LV MNT: runs in the private mount namespace, then becomes libvirtd.
cat > "$lv/inside.sh" <<'EOF'
set -eu
lv=$1 mnt=$2
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs /run
for d in /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p "$d"; mount --bind "$lv$d" "$d"
done
for d in qemu storage; do
  if [ -d /etc/libvirt/$d ]; then mount --bind "$lv/etc-$d" /etc/libvirt/$d; fi
done
# This machine has no udev: its /dev/kvm is root's, 0600, where Debian's
# udev rules make it group kvm, 0660 (libvirt-qemu is in kvm).  libvirt
# probes QEMU as root (KVM there) and then finds KVM unusable for
# libvirt-qemu: it discards its capabilities and probes again at every
# call (a minute of probing).  Here /dev/kvm gets Debian's group and mode.
if [ -c /dev/kvm ]; then
  mknod -m 0660 /run/kvm c $((0x$(stat -c %t /dev/kvm))) $((0x$(stat -c %T /dev/kvm)))
  chgrp kvm /run/kvm
  mount --bind /run/kvm /dev/kvm
fi
# Other FUSE mounts (other tests' corfs disks) are let go here, so that
# their unmounts are not held up while this namespace lives.
awk -v m="$mnt" '$3 ~ /^fuse/ && $2 != m {print $2}' /proc/self/mounts |
  while read -r p; do umount -l "$p" 2>/dev/null || true; done
virtlogd -d -p "$lv/virtlogd.pid"
exec libvirtd -f "$lv/libvirtd.conf" -p "$lv/libvirtd.pid"
EOF

uri="qemu:///system?socket=$lv/sock/libvirt-sock"
vsh () { timeout 60 virsh -q -c "$uri" "$@"; }
name=$(basename "$T")   # corfs-test.XXXXXX

# stop_libvirt: destroy the domain, end libvirtd and virtlogd (by their PIDs)
# and any QEMU of this test left behind (its -name guest=$name), so
# that the namespace, and its reference to the corfs mount, goes away.
lvpid=
LIBVIRT_TEST_ENV=(env)
[ -z "${LIBVIRT_TEST_LOG:-}" ] || LIBVIRT_TEST_ENV+=(LIBVIRT_LOG_FILTERS="1:qemu 1:util.command 3:*" LIBVIRT_LOG_OUTPUTS="1:file:$LIBVIRT_TEST_LOG")
stop_libvirt () {
  local p f
  [ -n "$lvpid" ] || return 0
  vsh destroy "$name" >/dev/null 2>&1 || true
  kill_pid "$lvpid"
  wait "$lvpid" 2>/dev/null || true
  f=$lv/virtlogd.pid
  [ -s "$f" ] && grep -q virtlogd "/proc/$(cat "$f")/cmdline" 2>/dev/null && kill_pid "$(cat "$f")"
  for p in /proc/[0-9]*; do
    grep -qaF "guest=$name," "$p/cmdline" 2>/dev/null && kill_pid "${p#/proc/}"
  done
  lvpid=
}
cleanup_fn stop_libvirt

"${LIBVIRT_TEST_ENV[@]}" unshare -m bash "$lv/inside.sh" "$lv" "$(realpath "$mnt")" > "$lv/libvirtd.out" 2>&1 &
lvpid=$!
for i in $(seq 150); do
  [ -S "$lv/sock/libvirt-sock" ] && vsh version >/dev/null 2>&1 && break
  alive "$lvpid" || { cat "$lv/libvirtd.out"; fail "libvirtd exited"; }
  sleep 0.2
done
vsh version >/dev/null 2>&1 || { cat "$lv/libvirtd.out"; fail "libvirtd does not answer on $lv/sock"; }
note "libvirtd $(libvirtd --version | awk '{print $NF}') up (pid $lvpid)"

gen=$("$CORFS" checkpoint --state "$st" d) || fail "corfs checkpoint failed"
nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
serial=$lv/serial.log
cat > "$lv/domain.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>$lv/vmlinuz</kernel>
    <initrd>$lv/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet loglevel=3 panic=-1 corfs.count=$count corfs.interval=0.05 corfs.nonce=$nonce</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$serial'/>
      <target port='0'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

out=$(vsh create "$lv/domain.xml" 2>&1) || {
  tail -n 20 "$lv/var/log/libvirt/qemu/$name.log" 2>/dev/null; cat "$lv/libvirtd.out"
  fail "virsh create failed: $out"
}
note "domain $name started (virsh create)"
owner=$(stat -c %U "$disk")
[ "$owner" = libvirt-qemu ] || fail "the disk is $owner's while the domain runs, expected libvirt-qemu's (dynamic ownership)"
[ "$(vsh domstate "$name")" = running ] || fail "domain state: $(vsh domstate "$name" 2>&1)"

# virsh domblkinfo: capacity is the disk's size.
info=$(vsh domblkinfo "$name" vda 2>&1) || fail "virsh domblkinfo failed: $info"
cap=$(awk '$1 == "Capacity:" {print $2}' <<<"$info")
[ "$cap" = $size ] || fail "virsh domblkinfo capacity '$cap', expected $size: $info"
note "domblkinfo: $(tr '\n' ' ' <<<"$info")"

# virsh blockresize (QEMU's block_resize: an ftruncate of the disk file)
# grows the disk by 64 MiB while the domain runs.  Its size is the new
# size, a scaled integer in KiB without a suffix: given in bytes here.
new=$((size + 64 * MiB))
disk_json () {
  "$CORFS" status --state "$st" d --json |
    python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["size"], j["parent_size"])'
}
capacity () {
  local info; info=$(vsh domblkinfo "$name" vda 2>&1) || fail "virsh domblkinfo failed: $info"
  awk '$1 == "Capacity:" {print $2}' <<<"$info"
}
# check_size BYTES WHEN: the corfs file and `status --json` give BYTES
# (the parent's size stays $size).
check_size () {
  local s j
  s=$(stat -c %s "$disk"); [ "$s" = "$1" ] || fail "$2: the disk file is $s bytes, expected $1"
  j=$(disk_json) || fail "$2: corfs status --json failed"
  [ "$j" = "$1 $size" ] || fail "$2: status --json size, parent_size '$j', expected '$1 $size'"
}
out=$(vsh blockresize "$name" vda "${new}B" 2>&1) || fail "virsh blockresize to $new bytes failed: $out"
cap=$(capacity)
[ "$cap" = $new ] || fail "after blockresize: domblkinfo capacity '$cap', expected $new"
check_size $new "after blockresize"
grep -q "cor: disk d: grown from $size to $new bytes" "$st/corfs.log" ||
  fail "no 'grown from $size to $new bytes' in the daemon's log"
note "blockresize: grown to $new bytes (domblkinfo, stat, status --json)"
# A shrink is refused by corfs (EINVAL from the truncate): virsh fails and
# the size is unchanged for QEMU and corfs.
if out=$(vsh blockresize "$name" vda "${size}B" 2>&1); then
  fail "virsh blockresize to $size bytes (a shrink) succeeded: $out"
fi
[ -n "$out" ] || fail "virsh blockresize (a shrink) failed without a message"
grep -q "cor: disk d: resize from $new to $size bytes refused: shrinking" "$st/corfs.log" ||
  fail "no 'resize from $new to $size bytes refused: shrinking' in the daemon's log (virsh: $out)"
cap=$(capacity)
[ "$cap" = $new ] || fail "after a refused shrink: domblkinfo capacity '$cap', expected $new"
check_size $new "after a refused shrink"
[ "$(vsh domstate "$name")" = running ] || fail "after a refused shrink, domain state: $(vsh domstate "$name" 2>&1)"
note "blockresize to $size bytes refused: $(tr '\n' ' ' <<<"$out")"

# An incremental backup without domfsfreeze: the domain paused (QEMU
# drains its requests), `corfs checkpoint`, the extents `corfs dirty
# --since` the previous checkpoint lists copied from the disk file, resume.
# backup_copy JSON: copy those extents from the disk into $backup.
backup=$T/backup.img
truncate -s $size "$backup"
backup_copy () {
  python3 - "$disk" "$backup" "$1" <<'PY'
import json, sys
disk, backup, j = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
n = 0
with open(disk, "rb") as src, open(backup, "r+b") as dst:
    for e in j["extents"]:
        src.seek(e["offset"]); dst.seek(e["offset"])
        dst.write(src.read(e["length"])); n += e["length"]
print("%d extent(s), %d bytes, since generation %s" % (len(j["extents"]), n, j["since"]))
PY
}
wait_guest_acks 10 120 "$serial"
vsh suspend "$name" >/dev/null || fail "virsh suspend failed"
n1=$(guest_acks "$serial")
gen2=$("$CORFS" checkpoint --state "$st" d) || fail "corfs checkpoint (paused) failed"
"$CORFS" dirty --state "$st" d --since "$gen" --json > "$T/dirty1.json" || fail "corfs dirty --since $gen failed"
out=$(backup_copy "$T/dirty1.json") || fail "backup copy failed: $out"
# The range blockresize added is changed since $gen (a backup copies it).
python3 - "$T/dirty1.json" $size $new <<'PY' || fail "corfs dirty --since $gen does not list the grown range [$size, $new)"
import json, sys
j, lo, hi = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
for e in sorted(j["extents"], key=lambda e: e["offset"]):
    if e["offset"] <= lo < e["offset"] + e["length"]:
        lo = e["offset"] + e["length"]
sys.exit(0 if lo >= hi else 1)
PY
sleep 1
[ "$(guest_acks "$serial")" = "$n1" ] || fail "ACKs while the domain was paused"
vsh resume "$name" >/dev/null || fail "virsh resume failed"
note "paused at $n1 ACKs: checkpoint $gen2, backup of $out"
tr -d '\r' < "$serial" | grep '^ACK ' | head -n "$n1" > "$T/acks1"
out=$(guest_check "$backup" "$nonce" "$T/acks1") || fail "the backup misses records ACKed before the pause: $out"
note "backup at the pause: $out"

# The guest powers off after its last record: the transient domain ends.
for i in $(seq 600); do
  vsh domstate "$name" >/dev/null 2>&1 || break
  sleep 0.2
done
if vsh domstate "$name" >/dev/null 2>&1; then
  tail -n 5 "$serial"; fail "the domain did not end within 120 s"
fi
n=$(guest_acks "$serial")
grep -q "^GUEST-DONE $count" "$serial" || { tail -n 5 "$serial"; fail "the guest did not finish its $count records"; }
! grep -q '^WRITE-ERROR' "$serial" || fail "the guest saw write errors: $(grep -m1 '^WRITE-ERROR' "$serial")"
[ "$n" = $count ] || fail "$n ACKs, expected $count"
# libvirt gives the disk back to its owner before the domain (root: corfs
# has no xattrs for libvirt to remember another owner in).
owner=$(stat -c %U "$disk")
[ "$owner" = root ] || fail "the disk is $owner's after the domain ended, expected root's again"
note "domain ended after $n ACKed records; the disk is root's again"

# The next incremental (since the pause's checkpoint) on top of the first:
# the backup holds every record.
"$CORFS" dirty --state "$st" d --since "$gen2" --json > "$T/dirty2.json" || fail "corfs dirty --since $gen2 failed"
out=$(backup_copy "$T/dirty2.json") || fail "backup copy failed: $out"
note "incremental backup: $out"
out=$(guest_check "$backup" "$nonce" "$serial") || fail "the backup misses records: $out"
note "backup after the incremental: $out"

stop_libvirt
note "libvirtd stopped"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount failed"
wait_gone "$pid"
corfs_mount "$st" "$mnt" -o allow_other
out=$(guest_check "$disk" "$nonce" "$serial") || fail "after remount: ACKed records missing or invalid: $out"
check_size $new "after the remount"
note "after remount: $out"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount (2) failed"
wait_gone "$pid"
note "done"
echo OK
