/*
 * The pod sandbox's process (scripts/images/build.sh builds it static, into an empty image).
 *
 * It only has to exist: the pod's namespaces live as long as it does. It waits for
 * SIGINT or SIGTERM and then exits 0; when the pod shares one PID namespace it is PID 1
 * there, so it also reaps the children that other processes leave behind (SIGCHLD).
 *
 * The three signals are blocked and taken synchronously with sigwait(): no handlers, and
 * no window between checking for a signal and going to sleep.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

static void reap_children(void)
{
    /* One SIGCHLD may stand for several exits: collect every child that has ended. */
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

int main(void)
{
    sigset_t wanted;
    int sig, err;

    sigemptyset(&wanted);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGCHLD);
    err = sigprocmask(SIG_BLOCK, &wanted, NULL);
    if (err != 0) {
        fprintf(stderr, "pause: sigprocmask: %s\n", strerror(errno));
        return 1;
    }
    for (;;) {
        err = sigwait(&wanted, &sig);
        if (err != 0) {
            fprintf(stderr, "pause: sigwait: %s\n", strerror(err));
            return 1;
        }
        if (sig == SIGCHLD) {
            reap_children();
            continue;
        }
        return 0; /* SIGINT or SIGTERM: the pod is being torn down. */
    }
}
