/*
 * crash.h — a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) becomes one line on
 * stderr naming the plugin file and the call that crashed, and summary.json says
 * "crashed"; then the signal is re-raised with its default action, so the exit status
 * still shows which signal ended the process (a shell prints 139 for SIGSEGV, 134 for
 * SIGABRT).
 *
 *   moelab: plugin build/plugins/softmax_x.so: forward: crashed (SIGSEGV)
 *   moelab: crashed (SIGSEGV) outside plugin code
 *
 * The host brackets every call into plugin code with ml_crash_enter()/ml_crash_leave()
 * (two stores; plugin calls are made from the main thread only, so a plain global is the
 * right context for the thread that crashes there). Whenever summary.json is written, the
 * writer also hands over the "crashed" variant (ml_crash_arm): the handler cannot format
 * or allocate, so it only appends the error fields and replaces the file with open, write,
 * fsync and rename, all async-signal-safe.
 *
 * Stack overflows are caught on an alternate signal stack, which exists for the thread
 * that called ml_crash_install() (the main thread); a crash in another thread is still
 * reported when that thread's stack is usable.
 *
 * Ownership: everything here is process-global; strings passed to ml_crash_enter must live
 * as long as the call (plugin files live until ml_plugins_unload_all, call names are
 * literals). ml_crash_arm copies what it is given.
 */
#ifndef MOELAB_CRASH_H
#define MOELAB_CRASH_H

#include "base/common.h"

/* The plugin call in progress (file, call name), or call == NULL outside plugin code. */
extern const char *volatile ml_crash_file;
extern const char *volatile ml_crash_call;

/* Before a call into plugin code: file as ml_plugin_file() gives it, call e.g. "forward". */
static inline void ml_crash_enter(const char *file, const char *call) {
    ml_crash_file = file;
    ml_crash_call = call;
}
/* After the call returned. */
static inline void ml_crash_leave(void) { ml_crash_call = NULL; }

/*
 * A plugin writes its error message into a buffer of ML_ERR_MAX bytes; one that forgets
 * the terminator must not make the host read past the buffer. Call after every plugin
 * call whose err buffer the host may read.
 */
static inline void ml_err_seal(char *err) { err[ML_ERR_MAX - 1] = 0; }

/*
 * Installs the handlers (sigaction with SA_ONSTACK | SA_RESETHAND, and a sigaltstack for
 * the calling thread) for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT. Idempotent.
 * Returns ML_ERR with a message when the kernel refuses.
 */
int ml_crash_install(void);

/*
 * What the handler writes to summary_path (absolute) when the process crashes: the JSON
 * object crashed_json (status "crashed", without the fields "error", "signal", "plugin",
 * "call" and "updated", which the handler appends). Copied; replaces the previous one.
 * ML_ERR when out of memory (the previous summary stays armed).
 */
int ml_crash_arm(const char *summary_path, const char *crashed_json);
/* No summary is written on a crash from now on (the run directory is closed). */
void ml_crash_disarm(void);

/* "SIGSEGV", ... for the signals above; "signal" for others. */
const char *ml_crash_signal_name(int sig);

#endif
