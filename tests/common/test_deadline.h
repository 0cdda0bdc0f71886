/* Deadlines in test programs are deadlock detectors, never speed checks:
 * test_alarm(s) arms alarm() for s seconds times TEST_TIME_SCALE (set by
 * tests/run-all.sh where programs run slower: under qemu-user, under the
 * sanitizers), so that a slow or busy machine is never taken for a hang. */
#ifndef NVIPCFIX_TEST_DEADLINE_H
#define NVIPCFIX_TEST_DEADLINE_H

#include <stdlib.h>
#include <unistd.h>

static inline unsigned test_time_scale(void)
{
    const char *s = getenv("TEST_TIME_SCALE");
    long v = s != NULL ? strtol(s, NULL, 10) : 1;
    return v >= 1 && v <= 100 ? (unsigned)v : 1;
}

static inline void test_alarm(unsigned seconds)
{
    alarm(seconds * test_time_scale());
}

#endif
