#ifndef TOLLGATE_CRC32C_H
#define TOLLGATE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/// Whether this CPU has the CRC-32C instruction (x86-64 SSE 4.2); 0 elsewhere.
int tollgate_crc32c_hardware_available(void);

/// CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (the inverted running value,
/// as the table-driven code keeps it). Call only when the hardware is available.
uint32_t tollgate_crc32c_hardware(uint32_t crc, const uint8_t *bytes, size_t length);

#endif
