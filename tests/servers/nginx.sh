# nginx for corfs HTTP tests.  Source after tests/functions.sh:
#   . "$(dirname "$0")/../servers/nginx.sh"
# Provides:
#   free_port                  print a free TCP port on 127.0.0.1
#   start_nginx DIR SERVERS    write DIR/nginx.conf (worker_processes 1,
#                              daemon on, pid/logs/temp paths under DIR)
#                              whose http{} block holds SERVERS (server{}
#                              blocks, listen 127.0.0.1:PORT), start it,
#                              register its stop (by its pid file)
#   reload_nginx DIR SERVERS   rewrite the config and reload (SIGHUP); the
#                              caller polls for the new behaviour
#   wait_http URL CODE [CURLARGS...]  poll (at most 10 s) until URL answers CODE
# nginx runs as root here (user root;) so its worker can read files under
# $T, which mktemp creates mode 0700.

free_port () {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

_nginx_conf () {
  local dir=$1 servers=$2
  mkdir -p "$dir/tmp"
  cat > "$dir/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon on;
pid $dir/nginx.pid;
error_log $dir/error.log info;
events { worker_connections 128; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
$servers
}
EOF
}

_nginx () { local dir=$1; shift; /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" "$@"; }

_stop_nginx () {
  local dir=$1
  [ -s "$dir/nginx.pid" ] && kill_pid "$(cat "$dir/nginx.pid")"
  return 0
}

start_nginx () {
  local dir=$1 servers=$2 i
  [ -x /usr/sbin/nginx ] || skip "nginx not installed"
  _nginx_conf "$dir" "$servers"
  rm -f "$dir/nginx.pid"
  _nginx "$dir" -t -q || fail "nginx config test failed: $dir/nginx.conf"
  _nginx "$dir" || fail "nginx did not start ($(tail -n 3 "$dir/error.log" 2>/dev/null))"
  for i in $(seq 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
  [ -s "$dir/nginx.pid" ] || fail "nginx wrote no pid file"
  cleanup_fn _stop_nginx "$dir"
}

reload_nginx () {
  local dir=$1 servers=$2
  _nginx_conf "$dir" "$servers"
  _nginx "$dir" -t -q || fail "nginx config test failed: $dir/nginx.conf"
  _nginx "$dir" -s reload || fail "nginx reload failed"
}

wait_http () {
  local url=$1 code=$2 got="" i; shift 2
  for i in $(seq 50); do
    got=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
    [ "$got" = "$code" ] && return 0
    sleep 0.2
  done
  fail "$url answered $got, expected $code"
}
