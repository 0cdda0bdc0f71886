/* A process on a machine without libcuda.so.1 that still finds the IPC entry
 * point by name (as a plugin probing for CUDA would). Natively the name is
 * not there; under nvipcfix it is, and must answer with an error, not crash.
 *
 * no_driver --data-file PATH: first closes fd 2 and opens PATH (which gets
 * fd 2, as in a daemon that closed its stderr), writes RECORD-1, makes the
 * calls (nvipcfix has a warning to say), writes RECORD-2: PATH must hold
 * only those two records.
 * no_driver --reuse-log-fd PATH: makes one call (nvipcfix opens its log
 * file), closes every descriptor above 2 (as a daemon does), opens PATH
 * (which gets the log's number), writes RECORD-1, makes the second call,
 * writes RECORD-2 and exits with PATH open (NVIPCFIX_STATS=1 has a line to
 * say at exit): PATH must hold only the two records. */
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

/* Opens the data file and writes the first record; -1 on failure. */
static int open_data_file(const char *path, int expected_fd)
{
    int data = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (data != expected_fd || write_record(data, "RECORD-1\n") != 0) {
        printf("data file not on fd %d (fd %d)\n", expected_fd, data);
        return -1;
    }
    return data;
}

int main(int argc, char **argv)
{
    int data = -1, reuse_log_fd = argc == 3 && strcmp(argv[1], "--reuse-log-fd") == 0;
    if (argc == 3 && strcmp(argv[1], "--data-file") == 0) {
        close(2);
        if ((data = open_data_file(argv[2], 2)) < 0)
            return 2;
    }
    CUresult (*get)(CUipcMemHandle *, CUdeviceptr) =
        (CUresult(*)(CUipcMemHandle *, CUdeviceptr))dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    if (get == NULL) {
        printf("no cuIpcGetMemHandle\n");
        return 0;
    }
    CUipcMemHandle h;
    printf("cuIpcGetMemHandle -> %d\n", (int)get(&h, 0x1000));
    fflush(stdout);
    if (reuse_log_fd) {
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        if ((data = open_data_file(argv[2], 3)) < 0)
            return 2;
    }
    printf("again -> %d\n", (int)get(&h, 0x1000));
    if (data >= 0 && write_record(data, "RECORD-2\n") != 0)
        return 2;
    if (data >= 0 && !reuse_log_fd && close(data) != 0)
        return 2;
    return 0; /* with --reuse-log-fd the data file stays open through exit */
}
