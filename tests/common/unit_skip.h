/* A cmocka test that cannot run here says why before it skips: the CPU
 * tier's runner (tests/run-all.sh) prints the reason beside the test's name
 * and counts it in the summary. Include after <cmocka.h>. */
#ifndef NVIPCFIX_TEST_UNIT_SKIP_H
#define NVIPCFIX_TEST_UNIT_SKIP_H

#define skip_because(why)                        \
    do {                                         \
        print_message("skipped: %s\n", (why));   \
        skip();                                  \
    } while (0)

#endif
