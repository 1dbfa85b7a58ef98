/* Writes one byte (argv[1], default 1) to gureum's boot-timer port 0x440.
 * Linked static into the initramfs; the guest kernel has no /dev/port (it needs ISA or PCI). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv) {
    int value = argc > 1 ? atoi(argv[1]) : 1;
    if (ioperm(0x440, 1, 1) != 0) {
        perror("boot-timer: ioperm");
        return 1;
    }
    outb((unsigned char)value, 0x440);
    return 0;
}
