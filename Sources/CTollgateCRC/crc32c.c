#include "tollgate_crc32c.h"

#include <string.h>

#if defined(__x86_64__)

int tollgate_crc32c_hardware_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}

// The instruction computes CRC-32C over 8, 4 or 1 bytes at a time; only this function is
// compiled for SSE 4.2, so the rest of the binary runs on any x86-64.
__attribute__((target("sse4.2")))
uint32_t tollgate_crc32c_hardware(uint32_t crc, const uint8_t *bytes, size_t length) {
    uint64_t value = crc;
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8);
        value = __builtin_ia32_crc32di(value, word);
        bytes += 8;
        length -= 8;
    }
    uint32_t small = (uint32_t)value;
    while (length > 0) {
        small = __builtin_ia32_crc32qi(small, *bytes);
        bytes += 1;
        length -= 1;
    }
    return small;
}

#else

int tollgate_crc32c_hardware_available(void) { return 0; }

uint32_t tollgate_crc32c_hardware(uint32_t crc, const uint8_t *bytes, size_t length) {
    (void)bytes;
    (void)length;
    return crc;
}

#endif
