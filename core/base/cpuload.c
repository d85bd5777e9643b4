/* Runnable threads of other processes on our CPUs: a walk over /proc/<pid>/task/<tid>/stat,
   whose third field is the state and whose 39th is the CPU the thread last ran on (proc(5)). */
#include "base/cpuload.h"

#include <ctype.h>
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* 1 when the thread whose stat file is `path` is runnable on a CPU of `mask` and its
   process's parent is not `skip_ppid` */
static int runnable_on(const char *path, const cpu_set_t *mask, long skip_ppid) {
    char buf[1024];
    FILE *f = fopen(path, "r");
    if (!f) return 0; /* the thread ended between the listing and the read */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* the command name (field 2) is in parentheses and may hold spaces and ')': the fields
       after it start after the last ')' */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || p[2] != 'R') return 0;
    p += 2; /* field 3, the state; field 4, the parent */
    if (skip_ppid > 0 && p[1] == ' ' && atol(p + 2) == skip_ppid) return 0;
    for (int field = 3; field < 39; field++) {
        p = strchr(p, ' ');
        if (!p) return 0;
        p++;
    }
    int cpu = atoi(p);
    return cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, mask);
}

static int numeric(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

static int look(const cpu_set_t *mask, long self, long skip_ppid) {
    DIR *proc = opendir("/proc");
    if (!proc) return -1;
    int count = 0;
    struct dirent *d;
    char path[640];
    while ((d = readdir(proc))) {
        if (!numeric(d->d_name) || atol(d->d_name) == self) continue;
        snprintf(path, sizeof path, "/proc/%s/task", d->d_name);
        DIR *tasks = opendir(path);
        if (!tasks) continue;
        struct dirent *t;
        while ((t = readdir(tasks))) {
            if (!numeric(t->d_name)) continue;
            snprintf(path, sizeof path, "/proc/%s/task/%s/stat", d->d_name, t->d_name);
            count += runnable_on(path, mask, skip_ppid);
        }
        closedir(tasks);
    }
    closedir(proc);
    return count;
}

int ml_cpu_others_running(int looks, int gap_ms, long skip_ppid) {
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask)) return -1;
    long self = (long)getpid();
    int least = -1;
    for (int i = 0; i < looks; i++) {
        if (i) {
            struct timespec ts = {gap_ms / 1000, (long)(gap_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        int n = look(&mask, self, skip_ppid);
        if (n < 0) return -1;
        if (least < 0 || n < least) least = n;
        if (least == 0) break;
    }
    return least;
}
