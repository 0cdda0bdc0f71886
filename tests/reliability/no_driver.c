/* A process on a machine without libcuda.so.1 that still finds the IPC entry
 * point by name (as a plugin probing for CUDA would). Natively the name is
 * not there; under nvipcfix it is, and must answer with an error, not crash.
 *
 * no_driver --data-file PATH: first closes fd 2 and opens PATH (which gets
 * fd 2, as in a daemon that closed its stderr), writes RECORD-1, makes the
 * calls (nvipcfix has a warning to say), writes RECORD-2: PATH must hold
 * only those two records. */
#include <cuda.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int write_record(int fd, const char *record)
{
    size_t len = strlen(record), done = 0;
    while (done < len) {
        ssize_t w = write(fd, record + done, len - done);
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int data = -1;
    if (argc == 3 && strcmp(argv[1], "--data-file") == 0) {
        close(2);
        data = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (data != 2 || write_record(data, "RECORD-1\n") != 0) {
            printf("data file not on fd 2 (fd %d)\n", data);
            return 2;
        }
    }
    CUresult (*get)(CUipcMemHandle *, CUdeviceptr) =
        (CUresult(*)(CUipcMemHandle *, CUdeviceptr))dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    if (get == NULL) {
        printf("no cuIpcGetMemHandle\n");
        return 0;
    }
    CUipcMemHandle h;
    printf("cuIpcGetMemHandle -> %d\n", (int)get(&h, 0x1000));
    printf("again -> %d\n", (int)get(&h, 0x1000));
    if (data >= 0 && (write_record(data, "RECORD-2\n") != 0 || close(data) != 0))
        return 2;
    return 0;
}
