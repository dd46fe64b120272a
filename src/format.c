/* format.c - formatted messages without stdio.  The allocator may not call printf (it can
 * allocate, and may be what is broken), so this is a small formatter into a stack buffer,
 * written out with one write(2).  Supported: %s %c %d %ld %u %lu %zu %llu %x %lx %p %%. */
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void hmi_write(int fd, const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    s += w;
    n -= (size_t)w;
  }
}

typedef struct out_s {
  char *buf;
  size_t len, pos; /* pos counts every character, also those that did not fit */
} out_t;

static void put(out_t *o, char c) {
  if (o->pos + 1 < o->len) o->buf[o->pos] = c;
  o->pos++;
}

static void put_unsigned(out_t *o, unsigned long long v, unsigned base) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v % base];
    v /= base;
  } while (v != 0);
  while (n > 0) put(o, tmp[--n]);
}

static size_t vfmt(char *buf, size_t len, const char *fmt, va_list ap) {
  out_t o = {buf, len, 0};
  for (const char *f = fmt; *f; f++) {
    if (*f != '%') {
      put(&o, *f);
      continue;
    }
    f++;
    int longs = 0;
    while (*f == 'l') { longs++; f++; }
    if (*f == 'z') { longs = 2; f++; }
    switch (*f) {
      case 's': {
        const char *s = va_arg(ap, const char *);
        for (s = s ? s : "(null)"; *s; s++) put(&o, *s);
        break;
      }
      case 'c': put(&o, (char)va_arg(ap, int)); break;
      case 'd': {
        long long v = longs ? va_arg(ap, long long) : va_arg(ap, int);
        unsigned long long u = (unsigned long long)v;
        if (v < 0) { put(&o, '-'); u = 0ull - u; }
        put_unsigned(&o, u, 10);
        break;
      }
      case 'u': put_unsigned(&o, longs ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 10); break;
      case 'x': put_unsigned(&o, longs ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 16); break;
      case 'p': put(&o, '0'); put(&o, 'x'); put_unsigned(&o, (uintptr_t)va_arg(ap, void *), 16); break;
      case '%': put(&o, '%'); break;
      default: put(&o, '%'); if (*f) put(&o, *f); else f--; break;
    }
  }
  if (len > 0) buf[o.pos < len ? o.pos : len - 1] = '\0';
  return o.pos;
}

size_t hmi_fmt(char *buf, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t n = vfmt(buf, len, fmt, ap);
  va_end(ap);
  return n;
}

void hmi_dprintf(int fd, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vfmt(buf, sizeof buf, fmt, ap);
  va_end(ap);
  hmi_write(fd, buf);
}

void hmi_warn(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  size_t n = vfmt(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  (void)n;
  hmi_write(2, buf);
}

void hmi_fatal(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vfmt(buf, sizeof buf, fmt, ap);
  va_end(ap);
  hmi_write(2, buf);
  abort();
}

void hmi_assert_fail(const char *cond, const char *file, int line) {
  hmi_fatal("hmalloc: assertion failed: %s (%s:%d)\n", cond, file, line);
}
