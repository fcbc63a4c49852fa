/* Unit tests: block arithmetic of the engine and the common helpers. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/iobuf.h"
#include "common/util.h"
#include "cor/cor.h"

Test (cor, block_range_aligned)
{
  uint64_t first, end;
  cor_block_range (0, 65536, 16, &first, &end);
  cr_assert_eq (first, 0);
  cr_assert_eq (end, 1);
  cor_block_range (65536, 131072, 16, &first, &end);
  cr_assert_eq (first, 1);
  cr_assert_eq (end, 3);
}

Test (cor, block_range_unaligned)
{
  uint64_t first, end;
  /* One byte at the last byte of block 0. */
  cor_block_range (65535, 1, 16, &first, &end);
  cr_assert_eq (first, 0);
  cr_assert_eq (end, 1);
  /* Two bytes straddling blocks 0 and 1. */
  cor_block_range (65535, 2, 16, &first, &end);
  cr_assert_eq (first, 0);
  cr_assert_eq (end, 2);
  /* 4 KiB blocks, odd range in the middle. */
  cor_block_range (12345, 10000, 12, &first, &end);
  cr_assert_eq (first, 3);
  cr_assert_eq (end, (12345 + 10000 - 1) / 4096 + 1);
}

Test (cor, block_range_large_offsets)
{
  uint64_t first, end;
  uint64_t off = (1ULL << 50) + 7;
  cor_block_range (off, 1 << 20, 22, &first, &end);
  cr_assert_eq (first, off >> 22);
  cr_assert_eq (end, ((off + (1 << 20) - 1) >> 22) + 1);
}

Test (util, parse_size)
{
  uint64_t v;
  cr_assert_eq (parse_size ("4096", &v), 0); cr_assert_eq (v, 4096);
  cr_assert_eq (parse_size ("64K", &v), 0); cr_assert_eq (v, 65536);
  cr_assert_eq (parse_size ("64k", &v), 0); cr_assert_eq (v, 65536);
  cr_assert_eq (parse_size ("1M", &v), 0); cr_assert_eq (v, 1 << 20);
  cr_assert_eq (parse_size ("2G", &v), 0); cr_assert_eq (v, 2ULL << 30);
  cr_assert_eq (parse_size ("4MiB", &v), 0); cr_assert_eq (v, 4 << 20);
  cr_assert_eq (parse_size ("abc", &v), -1); cr_assert_eq (errno, EINVAL);
  cr_assert_eq (parse_size ("", &v), -1);
  cr_assert_eq (parse_size ("-1", &v), -1);
  cr_assert_eq (parse_size ("3X", &v), -1);
  cr_assert_eq (parse_size ("99999999999T", &v), -1); cr_assert_eq (errno, ERANGE);
}

Test (util, parse_bool)
{
  bool b;
  cr_assert_eq (parse_bool ("true", &b), 0); cr_assert (b);
  cr_assert_eq (parse_bool ("off", &b), 0); cr_assert (!b);
  cr_assert_eq (parse_bool ("maybe", &b), -1);
}

Test (util, name_is_valid)
{
  cr_assert (name_is_valid ("vm1"));
  cr_assert (name_is_valid ("disk.img-2_a"));
  cr_assert (!name_is_valid (""));
  cr_assert (!name_is_valid ("."));
  cr_assert (!name_is_valid (".."));
  cr_assert (!name_is_valid ("a/b"));
  cr_assert (!name_is_valid ("a b"));
  cr_assert (!name_is_valid ("01234567890123456789012345678901234567890123456789012345678901234"));
}

Test (util, url_redact)
{
  char *u = url_redact ("nbd://user:secret@host:10809/export");
  cr_assert_str_eq (u, "nbd://host:10809/export");
  free (u);
  u = url_redact ("https://bucket.example/disk.img?X-Amz-Signature=abc&X-Amz-Credential=k");
  cr_assert (strstr (u, "abc") == NULL, "signature leaked: %s", u);
  free (u);
  u = url_redact ("nbd+unix:///?socket=/run/p.sock");
  cr_assert_str_eq (u, "nbd+unix:///?socket=/run/p.sock");
  free (u);
}

/* url_redact keeps a URL whole except for the credentials in it. */
static void
redacts_to (const char *url, const char *want)
{
  char *u = url_redact (url);
  cr_assert_not_null (u);
  cr_assert_str_eq (u, want, "url_redact (%s)", url);
  free (u);
}

Test (util, url_redact_by_name)
{
  /* Secrets named key / apikey reached the index and the log. */
  redacts_to ("https://h.test/d.img?key=s3cr3t", "https://h.test/d.img?key=REDACTED");
  redacts_to ("https://h.test/d.img?apikey=s3cr3t&x=1", "https://h.test/d.img?apikey=REDACTED&x=1");
  redacts_to ("https://h.test/d.img?a=1&API_KEY=s3cr3t", "https://h.test/d.img?a=1&API_KEY=REDACTED");
  redacts_to ("https://h.test/d.img?access_token=t&password=p&passwd=q&secret=s&auth=a",
              "https://h.test/d.img?access_token=REDACTED&password=REDACTED&passwd=REDACTED"
              "&secret=REDACTED&auth=REDACTED");
  redacts_to ("https://h.test/d?Authorization=Bearer%20x&token=t&sas=z",
              "https://h.test/d?Authorization=REDACTED&token=REDACTED&sas=REDACTED");
  /* Percent-encoded names are still names: %6Bey is key. */
  redacts_to ("https://h.test/d?%6Bey=s3cr3t", "https://h.test/d?%6Bey=REDACTED");
  /* ';' separates parameters too. */
  redacts_to ("https://h.test/d?a=1;key=s", "https://h.test/d?a=1;key=REDACTED");
  /* The fragment is kept, and is not a parameter. */
  redacts_to ("https://h.test/d?sig=x#key=frag", "https://h.test/d?sig=REDACTED#key=frag");
}

Test (util, url_redact_presigned)
{
  /* Every SigV4 query parameter: they change at each signing. */
  redacts_to ("https://b.test/d.img?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F2"
              "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
              "&X-Amz-Security-Token=tok&X-Amz-Signature=abc&versionId=7",
              "https://b.test/d.img?X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED"
              "&X-Amz-Date=REDACTED&X-Amz-Expires=REDACTED&X-Amz-SignedHeaders=REDACTED"
              "&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED&versionId=7");
  redacts_to ("https://g.test/o?x-goog-signature=abc&alt=media",
              "https://g.test/o?x-goog-signature=REDACTED&alt=media");
  redacts_to ("https://a.test/c/d.img?sv=2022-11-02&sp=r&st=1&se=2&sig=abc",
              "https://a.test/c/d.img?sv=2022-11-02&sp=r&st=REDACTED&se=REDACTED&sig=REDACTED");
}

Test (util, url_redact_keeps_the_rest)
{
  /* Names that merely contain a listed one are not secrets: the old
   * substring match dropped ?socket=/run/signed.sock (it contains "sig"). */
  redacts_to ("nbd+unix:///?socket=/run/signed.sock", "nbd+unix:///?socket=/run/signed.sock");
  redacts_to ("nbd+unix:///exp?socket=/run/tokens/p.sock&tls-psk-file=/etc/k",
              "nbd+unix:///exp?socket=/run/tokens/p.sock&tls-psk-file=/etc/k");
  redacts_to ("nfs://srv/exp/d.img?version=3&uid=0", "nfs://srv/exp/d.img?version=3&uid=0");
  redacts_to ("https://h.test/monkey?keyboard=1&design=2&flag",
              "https://h.test/monkey?keyboard=1&design=2&flag");
  redacts_to ("https://h.test/d.img", "https://h.test/d.img");
  redacts_to ("https://h.test/d.img?", "https://h.test/d.img?");
  redacts_to ("file:///var/lib/x.img", "file:///var/lib/x.img");
  redacts_to ("", "");
}

/* Review of the by-name redaction: a secret value ran only to ';', and
 * names were compared whole (accessToken, x-api-key went through). */
Test (util, url_redact_value_to_ampersand)
{
  redacts_to ("https://h.test/d?password=hunter;2", "https://h.test/d?password=REDACTED");
  redacts_to ("https://h.test/d?token=a;b;c&x=1#f", "https://h.test/d?token=REDACTED&x=1#f");
  /* A harmless parameter still ends at ';'. */
  redacts_to ("https://h.test/d?a=1;password=p;q&b=2", "https://h.test/d?a=1;password=REDACTED&b=2");
}

Test (util, url_redact_words)
{
  static const char *const names[] = {
    "accessToken", "access-token", "apiToken", "authToken", "sessionToken", "x-api-key",
    "private_token", "security-token", "q-signature", "X-Api-Key", "APIKey", "apikey",
    "client.secret", "clientsecret", "oauth_token", "accesstoken", "ACCESS_KEY_ID",
    "sharedAccessSignature", "user_password", "db_pwd", "Credential", "auth", "jwt",
    "signingKey", "session_id", "code", "key2",
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char url[256], want[256];
    snprintf (url, sizeof url, "https://h.test/d.img?a=1&%s=s3cr3t&b=2", names[i]);
    snprintf (want, sizeof want, "https://h.test/d.img?a=1&%s=REDACTED&b=2", names[i]);
    redacts_to (url, want);
  }
  /* Words inside other words are not secrets. */
  redacts_to ("https://h.test/d?keyboard=1&monkey=2&tokenizer=3&passage=4&country_code=5&authors=6",
              "https://h.test/d?keyboard=1&monkey=2&tokenizer=3&passage=4&country_code=5&authors=6");
}

Test (util, url_redact_signed_window)
{
  /* Plain names: kept. */
  redacts_to ("https://h.test/d.img?st=1&se=2&expires=3&policy=p",
              "https://h.test/d.img?st=1&se=2&expires=3&policy=p");
  /* With a signature: the window goes too (it changes at every signing). */
  redacts_to ("https://a.test/c/d.img?sv=1&st=1&se=2&skt=3&ske=4&sig=abc",
              "https://a.test/c/d.img?sv=1&st=REDACTED&se=REDACTED&skt=REDACTED&ske=REDACTED"
              "&sig=REDACTED");
  redacts_to ("https://c.test/d.img?Expires=9&Policy=p&Signature=s&Key-Pair-Id=k",
              "https://c.test/d.img?Expires=REDACTED&Policy=REDACTED&Signature=REDACTED"
              "&Key-Pair-Id=REDACTED");
}

Test (util, url_redact_broken_authority)
{
  /* A password holding '/', '?' or '#': the authority does not parse, so
   * everything up to the last '@' goes. */
  redacts_to ("https://u:pa/ss@h.test/d.img", "https://h.test/d.img");
  redacts_to ("https://u:pa?ss@h.test/d.img?x=1", "https://h.test/d.img?x=1");
  redacts_to ("https://u:pa#ss@h.test/d.img", "https://h.test/d.img");
  /* Hosts that parse are not touched, '@' in the path or an IPv6 host. */
  redacts_to ("https://[::1]/a@b/d.img", "https://[::1]/a@b/d.img");
  redacts_to ("https://[::1]:8443/a@b", "https://[::1]:8443/a@b");
  redacts_to ("https://h.test:8080/a@b", "https://h.test:8080/a@b");
}

Test (util, url_redact_legacy)
{
  char *u = url_redact_legacy ("nbd+unix:///?socket=/run/signed.sock");
  cr_assert_str_eq (u, "nbd+unix:///");
  free (u);
  u = url_redact_legacy ("https://u:p@h.test/d.img?key=k");
  cr_assert_str_eq (u, "https://h.test/d.img?key=k");
  free (u);
}

Test (util, url_redact_userinfo)
{
  redacts_to ("nbd://user:secret@host:10809/export", "nbd://host:10809/export");
  /* A token as user name, and an unescaped '@' in a password. */
  redacts_to ("https://ghp_t0ken@h.test/d.img", "https://h.test/d.img");
  redacts_to ("https://u:p@ss@h.test/d.img?key=k", "https://h.test/d.img?key=REDACTED");
  /* Several '@' and no path: the userinfo ends at the last one. */
  redacts_to ("nbd://u:a@b@c@host:10809", "nbd://host:10809");
  /* An '@' after the authority is not userinfo. */
  redacts_to ("https://h.test/a@b/d.img?x=a@b", "https://h.test/a@b/d.img?x=a@b");
  redacts_to ("https://h.test?x=a@b", "https://h.test?x=a@b");
}

/* --epoch: digits only, 1 to INT64_MAX (strtoull took " -5" as 2^64 - 5). */
Test (util, parse_epoch)
{
  uint64_t v = 0;

  cr_assert_eq (parse_epoch ("12", &v), 0);
  cr_assert_eq (v, 12);
  cr_assert_eq (parse_epoch ("9223372036854775807", &v), 0);
  cr_assert_eq (v, INT64_MAX);
  cr_assert_eq (parse_epoch ("9223372036854775808", &v), -1);
  cr_assert_eq (errno, ERANGE);
  cr_assert_eq (parse_epoch ("99999999999999999999", &v), -1);
  cr_assert_eq (parse_epoch ("0", &v), -1);
  cr_assert_eq (parse_epoch ("", &v), -1);
  cr_assert_eq (parse_epoch (" -5", &v), -1);
  cr_assert_eq (parse_epoch ("+5", &v), -1);
  cr_assert_eq (parse_epoch (" 5", &v), -1);
  cr_assert_eq (parse_epoch ("5 ", &v), -1);
  cr_assert_eq (errno, EINVAL);
}

Test (util, is_zero)
{
  char buf[8192] = { 0 };
  cr_assert (is_zero (buf, sizeof buf));
  cr_assert (is_zero (buf, 0));
  buf[8191] = 1;
  cr_assert (!is_zero (buf, sizeof buf));
  buf[8191] = 0; buf[0] = 1;
  cr_assert (!is_zero (buf, sizeof buf));
}

/* iobuf: a thread gets back the buffer it returned, big enough. */
Test (iobuf, reuse_within_a_thread)
{
  char *a = iobuf_get (1 << 20);
  cr_assert_not_null (a);
  memset (a, 0xab, 1 << 20);            /* all of it is usable */
  iobuf_put (a, 1 << 20);
  char *b = iobuf_get (4096);           /* smaller: served by the kept one */
  cr_assert_eq (b, a);
  iobuf_put (b, 4096);
  char *c = iobuf_get (3 << 20);        /* larger: a new one */
  cr_assert_neq (c, a);
  memset (c, 0xcd, 3 << 20);
  iobuf_put (c, 3 << 20);               /* kept beside a */
  char *e = iobuf_get ((3 << 20) - 100);
  cr_assert_eq (e, c);
  iobuf_put (e, (3 << 20) - 100);
  iobuf_put (NULL, 10);                 /* ignored */
}

Test (iobuf, too_big_is_not_kept)
{
  size_t big = IOBUF_KEEP_MAX + 65536;
  cr_assert_eq (iobuf_kept (), 0);
  char *a = iobuf_get (big);
  cr_assert_not_null (a);
  memset (a, 1, big);
  iobuf_put (a, big);                   /* freed, not kept */
  cr_assert_eq (iobuf_kept (), 0);
  char *b = iobuf_get (65536);
  cr_assert_not_null (b);
  iobuf_put (b, 65536);
  cr_assert_eq (iobuf_kept (), 1 << 20);  /* small requests share 1 MiB buffers */
  char *c = iobuf_get (IOBUF_KEEP_MAX);
  iobuf_put (c, IOBUF_KEEP_MAX);        /* the limit itself is kept */
  cr_assert_eq (iobuf_kept (), (1 << 20) + IOBUF_KEEP_MAX);
}

Test (iobuf, two_kept)
{
  /* Merge's compare holds two buffers at once: both come back. */
  char *a = iobuf_get (1 << 20), *b = iobuf_get (1 << 20);
  cr_assert_neq (a, b);
  iobuf_put (a, 1 << 20);
  iobuf_put (b, 1 << 20);
  cr_assert_eq (iobuf_kept (), 2 << 20);
  char *c = iobuf_get (1 << 20), *d = iobuf_get (1 << 20);
  cr_assert ((c == a && d == b) || (c == b && d == a));
  iobuf_put (c, 1 << 20);
  iobuf_put (d, 1 << 20);
  char *e = iobuf_get (2 << 20);        /* larger: replaces one of them */
  iobuf_put (e, 2 << 20);
  cr_assert_eq (iobuf_kept (), 3 << 20);
}

static void *
other_thread (void *arg)
{
  /* Another thread's kept buffer is not this one's. */
  char *mine = iobuf_get (1 << 20);
  iobuf_put (mine, 1 << 20);
  return mine == arg ? (void *) 1 : NULL;
}

Test (iobuf, per_thread)
{
  pthread_t t;
  void *same;
  char *a = iobuf_get (1 << 20);
  iobuf_put (a, 1 << 20);               /* kept by this thread */
  cr_assert_eq (pthread_create (&t, NULL, other_thread, a), 0);
  cr_assert_eq (pthread_join (t, &same), 0);
  cr_assert_null (same);
  cr_assert_eq (iobuf_get (1 << 20), a);
  iobuf_put (a, 1 << 20);
}
