/* corfs: decompress one qcow2 cluster, zlib or zstd.
 *
 * QEMU writes a compressed cluster as raw deflate (no zlib header, a
 * window of 4 KiB: inflate with negative window bits; -15 reads any
 * window) or as a zstd frame, and its length in the L2 entry is rounded
 * up to 512-byte sectors, so input may follow the stream: decoding stops
 * when the cluster is whole.  Output that falls short is an error, never
 * zeros.  zstd's window is capped (8 MiB, four times QEMU's largest
 * cluster) so that a hostile frame cannot make corfs allocate more.
 *
 * Threads: any; each call has its own decoder state.
 */
#include <stdio.h>
#include <zlib.h>
#include <zstd.h>

#include "format/qcow2-internal.h"

#define ZSTD_WINDOW_LOG_MAX 23

static int
inflate_raw (const void *in, size_t in_len, void *out, size_t out_len, char *why,
             size_t why_len)
{
  z_stream z = { 0 };
  int ret;

  if (inflateInit2 (&z, -15) != Z_OK) {
    snprintf (why, why_len, "zlib: cannot initialise inflate");
    return -1;
  }
  z.next_in = (Bytef *) in;
  z.avail_in = in_len;
  z.next_out = out;
  z.avail_out = out_len;
  ret = inflate (&z, Z_FINISH);
  inflateEnd (&z);
  if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0)
    return 0;
  snprintf (why, why_len, "zlib: %s after %zu of %zu bytes",
            ret == Z_STREAM_END || ret == Z_BUF_ERROR ? "stream ends short"
            : z.msg ? z.msg : "inflate failed", out_len - z.avail_out, out_len);
  return -1;
}

static int
decompress_zstd (const void *in, size_t in_len, void *out, size_t out_len, char *why,
                 size_t why_len)
{
  ZSTD_DCtx *dctx = ZSTD_createDCtx ();
  ZSTD_inBuffer input = { in, in_len, 0 };
  ZSTD_outBuffer output = { out, out_len, 0 };
  size_t ret = 0;

  if (dctx == NULL) {
    snprintf (why, why_len, "zstd: cannot create a decoder");
    return -1;
  }
  ZSTD_DCtx_setParameter (dctx, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX);
  /* Each turn consumes input or produces output, or the stream is stuck:
   * bounded by in_len + out_len turns. */
  while (output.pos < output.size) {
    size_t in_pos = input.pos, out_pos = output.pos;

    ret = ZSTD_decompressStream (dctx, &output, &input);
    if (ZSTD_isError (ret) || (input.pos == in_pos && output.pos == out_pos))
      break;
  }
  ZSTD_freeDCtx (dctx);
  if (output.pos == output.size)
    return 0;
  snprintf (why, why_len, "zstd: %s after %zu of %zu bytes",
            ZSTD_isError (ret) ? ZSTD_getErrorName (ret) : "stream ends short",
            output.pos, out_len);
  return -1;
}

int
qcow2_decompress (enum qcow2_compression type, const void *in, size_t in_len, void *out,
                  size_t out_len, char *why, size_t why_len)
{
  if (type == QCOW2_ZSTD)
    return decompress_zstd (in, in_len, out, out_len, why, why_len);
  return inflate_raw (in, in_len, out, out_len, why, why_len);
}
