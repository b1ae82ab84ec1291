/*
 * ivshmem.fleet's guest-side workload: runs inside a Linux test guest and uses the ivshmem
 * device the way real software would, through the PCI BARs in sysfs.
 *
 * master: keeps writing a strictly increasing sequence number and the checksum of a data block
 *         it rewrites at each step; before each step it checks that the shared memory still
 *         holds exactly what it wrote last (no step lost or repeated, e.g. across a migration);
 *         rings a peer's doorbell at a steady rate.
 * peer:   waits for the master's first step, then reads what the master wrote and checks the
 *         checksum against the data. It survives its device being unplugged (a peer moved
 *         live): it drops its mappings when the device goes and maps it again when it is back.
 *         ``life`` counts its loops in its own RAM: it only grows while this guest runs, so a
 *         peer that migrated (and was not restarted) continues its count.
 * Both count the doorbells they receive (``bells``): with no driver bound, each points its
 * device's MSI-X vector 0 at a word of its own RAM, so QEMU's MSI write lands there. The master
 * rings peer ``ring-peer-id``; a peer rings the master (ID 0). Both ring 10 times a second.
 * An ivshmem-plain device has no MSI-X (no server, no doorbells): then neither rings nor counts.
 * Reports on stdout (the serial console), one line at a time:
 *   IVW <mode> seq=<n> ok [life=<n>] bells=<n>   |   IVW <mode> ERROR <what>
 *   IVW peer boot=<boot id>   |   IVW peer released life=<n>   |   IVW peer remapped id=<n> life=<n>
 * Usage: ivshmem-workload master|peer [ring-peer-id]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DATA_WORDS 1024
struct shared {
    volatile uint64_t magic;
    volatile uint64_t gen; /* seqlock: odd while the master rewrites the block */
    volatile uint64_t seq;
    volatile uint64_t checksum;
    volatile uint64_t data[DATA_WORDS];
};
#define MAGIC 0x49565348464c5431ULL /* "IVSHFLT1" */

static uint64_t mix(uint64_t x) { /* splitmix64: the data of step n is a function of n */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t checksum(volatile uint64_t *data) {
    uint64_t sum = 1469598103934665603ULL;
    for (int i = 0; i < DATA_WORDS; i++)
        sum = (sum ^ data[i]) * 1099511628211ULL;
    return sum;
}

static void *map_bar(const char *dir, int bar, size_t *size) {
    char path[512];
    /* No driver binds the device: enable its memory decoding ourselves. */
    snprintf(path, sizeof path, "%s/enable", dir);
    int en = open(path, O_WRONLY);
    if (en >= 0) { if (write(en, "1", 1) < 0) { /* already enabled */ } close(en); }
    snprintf(path, sizeof path, "%s/resource%d", dir, bar);
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) { printf("IVW open %s: %s\n", path, strerror(errno)); return NULL; }
    struct stat st; /* sysfs gives a BAR's size through stat, not lseek */
    if (fstat(fd, &st) < 0) { close(fd); return NULL; }
    *size = (size_t)st.st_size;
    void *p = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) printf("IVW mmap %s (%zu bytes): %s\n", path, *size, strerror(errno));
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

/* The guest-physical address of a locked page of ours (root reads it from pagemap). */
static uint64_t physical(void *page) {
    uint64_t entry = 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) return 0;
    if (pread(fd, &entry, sizeof entry, ((uintptr_t)page / 4096) * sizeof entry) != sizeof entry) entry = 0;
    close(fd);
    if (!(entry >> 63)) return 0;
    return (entry & ((1ULL << 55) - 1)) * 4096 + ((uintptr_t)page % 4096);
}

static volatile uint32_t *bell; /* where QEMU writes MSI-X vector 0's data */

/* Memory and bus mastering on, MSI-X vector 0 aimed at ``bell``, MSI-X enabled: 0. No MSI-X
 * capability (ivshmem-plain, which has no doorbells): 1. Failed: -1. */
static int doorbells_to_ram(const char *dir) {
    char path[600];
    uint8_t cfg[256];
    snprintf(path, sizeof path, "%s/config", dir);
    int fd = open(path, O_RDWR);
    if (fd < 0 || pread(fd, cfg, sizeof cfg, 0) != sizeof cfg) { if (fd >= 0) close(fd); return -1; }
    uint16_t command = cfg[4] | cfg[5] << 8 | 0x6;
    if (pwrite(fd, &command, 2, 4) != 2) { close(fd); return -1; }
    int cap = cfg[0x34];
    while (cap && cfg[cap] != 0x11) cap = cfg[cap + 1];
    if (!cap) { close(fd); return 1; }
    uint32_t table = cfg[cap + 4] | cfg[cap + 5] << 8 | cfg[cap + 6] << 16 | (uint32_t)cfg[cap + 7] << 24;
    size_t size = 0;
    volatile uint32_t *bar = map_bar(dir, table & 7, &size);
    if (!bell) {
        bell = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
        if (bell == MAP_FAILED) { bell = NULL; close(fd); return -1; }
        *bell = 0;
    }
    uint64_t at = physical((void *)bell);
    if (!bar || !at) { close(fd); return -1; }
    volatile uint32_t *entry = bar + (table & ~7u) / 4;
    entry[0] = (uint32_t)at;
    entry[1] = (uint32_t)(at >> 32);
    entry[2] = 1;
    entry[3] = 0; /* unmasked */
    uint16_t control = (cfg[cap + 2] | cfg[cap + 3] << 8 | 0x8000) & ~0x4000;
    int ok = pwrite(fd, &control, 2, cap + 2) == 2;
    close(fd);
    return ok ? 0 : -1;
}

static uint64_t bells;
static void count_bells(void) {
    if (bell && *bell) { bells++; *bell = 0; }
}

static int find_device(char *out, size_t len) {
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d))) {
        char path[512], buf[32];
        unsigned vendor = 0, device = 0;
        FILE *f;
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
        if (!(f = fopen(path, "r"))) continue;
        if (fgets(buf, sizeof buf, f)) vendor = strtoul(buf, NULL, 16);
        fclose(f);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
        if (!(f = fopen(path, "r"))) continue;
        if (fgets(buf, sizeof buf, f)) device = strtoul(buf, NULL, 16);
        fclose(f);
        if (vendor == 0x1af4 && device == 0x1110) {
            snprintf(out, len, "/sys/bus/pci/devices/%s", e->d_name);
            closedir(d);
            return 0;
        }
    }
    closedir(d);
    return -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "peer";
    int ring = argc > 2 ? atoi(argv[2]) : -1;
    char dir[512];
    size_t regs_size = 0, mem_size = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (find_device(dir, sizeof dir) < 0) {
        printf("IVW %s ERROR no ivshmem device\n", mode);
        return 1;
    }
    volatile uint32_t *regs = map_bar(dir, 0, &regs_size);
    struct shared *shm = map_bar(dir, 2, &mem_size);
    if (!regs || !shm || mem_size < sizeof(struct shared)) {
        printf("IVW %s ERROR cannot map BARs of %s\n", mode, dir);
        return 1;
    }
    printf("IVW %s start id=%u size=%zu\n", mode, regs[2], mem_size);
    int doorbells = doorbells_to_ram(dir);
    if (doorbells < 0) printf("IVW %s ERROR cannot aim MSI-X at RAM\n", mode);
    if (doorbells > 0) printf("IVW %s no doorbells (ivshmem-plain)\n", mode);
    doorbells = doorbells == 0;
    double last_report = 0, last_ring = 0;
    if (strcmp(mode, "master") == 0) {
        uint64_t seq = shm->magic == MAGIC ? shm->seq : 0; /* resume what the memory holds */
        uint64_t written = seq;
        for (;;) {
            if (shm->magic == MAGIC && shm->seq != written)
                printf("IVW master ERROR seq in memory %llu, wrote %llu\n",
                       (unsigned long long)shm->seq, (unsigned long long)written);
            else if (written && (shm->magic != MAGIC || shm->checksum != checksum(shm->data)))
                printf("IVW master ERROR data at seq %llu does not match its checksum\n",
                       (unsigned long long)written);
            seq = written + 1;
            shm->gen = shm->gen | 1; /* odd: a step is being written */
            __sync_synchronize();
            for (int i = 0; i < DATA_WORDS; i++)
                shm->data[i] = mix(seq * DATA_WORDS + i);
            shm->checksum = checksum(shm->data);
            shm->seq = seq;
            shm->magic = MAGIC;
            __sync_synchronize();
            shm->gen = shm->gen + 1; /* even: the step is complete */
            __sync_synchronize();
            written = seq;
            double t = now();
            if (doorbells && ring >= 0 && t - last_ring >= 0.1) {
                regs[3] = ((uint32_t)ring << 16) | 0; /* DOORBELL: peer ID << 16 | vector */
                last_ring = t;
            }
            count_bells();
            if (t - last_report >= 1.0) {
                printf("IVW master seq=%llu ok bells=%llu\n", (unsigned long long)seq, (unsigned long long)bells);
                last_report = t;
            }
            usleep(2000);
        }
    }
    char boot[64] = "unknown", resource[600];
    FILE *b = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (b) { if (fscanf(b, "%63s", boot) != 1) strcpy(boot, "unknown"); fclose(b); }
    printf("IVW peer boot=%s\n", boot);
    static volatile uint64_t life; /* in this guest's RAM: migrates with it */
    snprintf(resource, sizeof resource, "%s/resource2", dir);
    /* Memory the master has not written yet holds no step to check: wait for its first one
     * (the peer's guest may well boot before the master's workload runs). */
    printf("IVW peer waiting for the master's first step\n");
    while (shm->magic != MAGIC)
        usleep(20000);
    for (;;) {
        life++;
        if (access(resource, F_OK) != 0) { /* unplugged: release the BARs, wait for the device */
            munmap((void *)regs, regs_size);
            munmap(shm, mem_size);
            printf("IVW peer released life=%llu\n", (unsigned long long)life);
            double last = now();
            while (find_device(dir, sizeof dir) < 0 ||
                   !(regs = map_bar(dir, 0, &regs_size)) || !(shm = map_bar(dir, 2, &mem_size))) {
                usleep(50000);
                life++;
                if (now() - last >= 1.0) {
                    printf("IVW peer detached life=%llu\n", (unsigned long long)life);
                    last = now();
                }
            }
            snprintf(resource, sizeof resource, "%s/resource2", dir);
            if (doorbells && doorbells_to_ram(dir) < 0) printf("IVW peer ERROR cannot aim MSI-X at RAM\n");
            printf("IVW peer remapped id=%u life=%llu\n", regs[2], (unsigned long long)life);
        }
        uint64_t gen = shm->gen;
        __sync_synchronize();
        uint64_t seq = shm->seq;
        uint64_t sum = shm->checksum;
        int ok = shm->magic == MAGIC && checksum(shm->data) == sum;
        __sync_synchronize();
        if (!(gen & 1) && gen == shm->gen) { /* a consistent snapshot: no step written meanwhile */
            if (!ok && access(resource, F_OK) != 0)
                continue; /* unplugged while reading: not an error, the loop's top releases it */
            if (!ok)
                printf("IVW peer ERROR data at seq %llu does not match its checksum\n", (unsigned long long)seq);
            else if (now() - last_report >= 1.0) {
                printf("IVW peer seq=%llu ok life=%llu bells=%llu\n", (unsigned long long)seq,
                       (unsigned long long)life, (unsigned long long)bells);
                last_report = now();
            }
        }
        count_bells();
        if (doorbells && now() - last_ring >= 0.1) {
            regs[3] = 0; /* DOORBELL: the master, ID 0, vector 0 */
            last_ring = now();
        }
        usleep(20000);
    }
}
