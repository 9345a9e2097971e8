/* A wall clock shifted for one process, for the tests: LD_PRELOAD=clockshift.so.
 *
 * CLOCK_REALTIME (clock_gettime, gettimeofday, time) is moved by the number of seconds written in
 * the file named by $CLOCKSHIFT_FILE, read again at most every 20 ms of CLOCK_MONOTONIC, so a test
 * can make the clock jump while the process runs.  CLOCK_MONOTONIC and CLOCK_BOOTTIME are left
 * alone, as a real clock step leaves them.  With $CLOCKSHIFT_SYNCED set, adjtimex() says the clock
 * is synchronised (TIME_OK, STA_UNSYNC clear), as it would under NTP or with an RTC the kernel
 * trusts: the wrong clock the appliance must not believe.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);

static long long shift_s(void) {
    static long long shift;
    static struct timespec read_at;
    struct timespec now;
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    long long since_ns = (now.tv_sec - read_at.tv_sec) * 1000000000LL + (now.tv_nsec - read_at.tv_nsec);
    if (read_at.tv_sec == 0 || since_ns > 20000000LL) {
        const char *path = getenv("CLOCKSHIFT_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        if (f) {
            long long value;
            if (fscanf(f, "%lld", &value) == 1) shift = value;
            fclose(f);
        }
        read_at = now;
    }
    return shift;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int result = real_clock_gettime(id, ts);
    if (result == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift_s();
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    if (result == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    (void)tz;
    return result;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}

int adjtimex(struct timex *buf) {
    static int (*real_adjtimex)(struct timex *);
    if (!real_adjtimex) real_adjtimex = dlsym(RTLD_NEXT, "adjtimex");
    int result = real_adjtimex(buf);
    if (getenv("CLOCKSHIFT_SYNCED")) {
        buf->status &= ~STA_UNSYNC;
        return TIME_OK;
    }
    return result;
}
