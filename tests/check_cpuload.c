/* check_cpuload.c — the look at other processes' runnable threads that decides how moelab's
   idle threads wait (core/base/cpuload.c, core/main.c "How idle OpenMP threads wait"). */
#include "testutil.h"
#include "base/cpuload.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* a child process spinning on the CPUs we may use is seen as load */
START_TEST(a_spinning_process_is_seen) {
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        for (volatile unsigned long i = 0;; i++) {}
    }
    usleep(100000); /* let it be scheduled */
    int n = ml_cpu_others_running(5, 4, 0);
    /* the same child as a sibling rank (its parent is skipped): not counted (other load on a
       shared machine may come and go between the looks: five tries) */
    int m = n;
    for (int t = 0; t < 5 && m >= n; t++) {
        n = ml_cpu_others_running(5, 4, 0);
        m = ml_cpu_others_running(5, 4, (long)getpid());
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    ck_assert_msg(n >= 1, "a busy child process on our CPUs: %d other runnable threads seen", n);
    ck_assert_msg(m < n, "its parent skipped, the busy child still counted: %d of %d", m, n);
}
END_TEST

/* the threads of this process itself are never counted: a machine whose only load is us
   keeps the spinning wait. A thread of ours spins while we look. Other load on a shared test
   machine can only raise a count, so a try passes when the count while our thread spins is
   no more than the least count before and after it; five tries, so that load which comes
   and goes between looks does not decide. */
static volatile int g_stop;
static void *spin(void *arg) {
    (void)arg;
    while (!g_stop) {}
    return NULL;
}

START_TEST(our_own_threads_are_not_counted) {
    int before = 0, during = 0, after = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        before = ml_cpu_others_running(20, 2, 0);
        pthread_t t;
        g_stop = 0;
        ck_assert_int_eq(pthread_create(&t, NULL, spin, NULL), 0);
        usleep(50000);
        during = ml_cpu_others_running(20, 2, 0);
        g_stop = 1;
        pthread_join(t, NULL);
        after = ml_cpu_others_running(20, 2, 0);
        ck_assert_int_ge(before, 0);
        if (during <= (before < after ? before : after)) return;
    }
    ck_abort_msg("a thread of our own counted as load: %d before, %d while it spun, %d after", before, during, after);
}
END_TEST

static Suite *cpuload_suite(void) {
    Suite *s = suite_create("cpuload");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, a_spinning_process_is_seen);
    tcase_add_test(t, our_own_threads_are_not_counted);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(cpuload_suite()); }
