#ifndef REFERRALD_CLIBPQ_SHIM_H
#define REFERRALD_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#include <pthread.h>

/* Names the calling thread, so each connection's thread shows as "postgres" in `top -H`, gdb
 * and crash reports. glibc declares pthread_setname_np only under _GNU_SOURCE, which Swift's
 * Glibc module does not define, and Darwin's variant takes no thread argument. */
#if defined(__APPLE__)
static inline int referrald_pq_name_current_thread(const char *name) {
    return pthread_setname_np(name);
}
#else
extern int pthread_setname_np(pthread_t thread, const char *name);
static inline int referrald_pq_name_current_thread(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}
#endif
#endif
