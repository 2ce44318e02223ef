/* A program with no runtime dependencies: linked statically, it runs in a scratch image. */
#include <stdio.h>
#include <sys/utsname.h>

int main(void)
{
    struct utsname host;
    if (uname(&host) != 0) {
        perror("uname");
        return 1;
    }
    printf("hello from a static binary built by imagedsl (%s %s)\n", host.sysname, host.machine);
    return 0;
}
