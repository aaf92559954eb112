# CMake toolchain file for bare-metal Cortex-M with Debian's gcc-arm-none-eabi.
#   cmake -S . -B build/m4 -DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake -DSCALPEL_MCPU=cortex-m4
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(SCALPEL_MCPU cortex-m4 CACHE STRING "the Cortex-M core to build for")
set(CMAKE_C_FLAGS_INIT "-mcpu=${SCALPEL_MCPU} -mthumb")
