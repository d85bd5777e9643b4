/* main.c — the `moelab` command (placeholder entry until the CLI lands in this commit series). */
#include <stdio.h>
int main(void) { fputs("moelab: building\n", stderr); return 0; }
