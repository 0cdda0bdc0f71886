/* void *dlsym(void *handle, const char *name), aarch64
 *
 * The same contract as dlsym_entry_x86_64.S: asks
 * nvipcfix_dlsym_route(handle, name) for the function to run, then
 * tail-branches to it with the original arguments (x0, x1), the caller's
 * link register (x30) and the stack pointer exactly as they were, so the
 * dlsym that runs sees the real caller (RTLD_NEXT needs that). x30 is saved
 * and restored unchanged, never signed here: glibc reads it as the caller's
 * return address. The branch goes through x16, which a BTI landing pad
 * ("bti c", here too) accepts from an indirect branch. */
        .text
        .globl  dlsym
        .type   dlsym, %function
        .globl  nvipcfix_dlsym_entry    /* the same address, for nvipcfix itself */
        .hidden nvipcfix_dlsym_entry
        .p2align 2
dlsym:
nvipcfix_dlsym_entry:
        .cfi_startproc
        hint    #34                     /* bti c */
        stp     x29, x30, [sp, #-32]!
        .cfi_def_cfa_offset 32
        .cfi_offset 29, -32
        .cfi_offset 30, -24
        mov     x29, sp
        stp     x0, x1, [sp, #16]
        bl      nvipcfix_dlsym_route    /* same arguments, in place */
        mov     x16, x0
        ldp     x0, x1, [sp, #16]
        ldp     x29, x30, [sp], #32
        .cfi_restore 29
        .cfi_restore 30
        .cfi_def_cfa_offset 0
        br      x16
        .cfi_endproc
        .size   dlsym, .-dlsym

/* The GNU property note for BTI and PAC, when the compiler marks its own
 * objects so (-mbranch-protection): without it the linker would drop the
 * marking for the whole library. */
#if defined(__ARM_FEATURE_BTI_DEFAULT) || defined(__ARM_FEATURE_PAC_DEFAULT)
#if defined(__ARM_FEATURE_BTI_DEFAULT)
#define NVIPCFIX_BTI 1
#else
#define NVIPCFIX_BTI 0
#endif
#if defined(__ARM_FEATURE_PAC_DEFAULT)
#define NVIPCFIX_PAC 2
#else
#define NVIPCFIX_PAC 0
#endif
        .pushsection .note.gnu.property, "a"
        .balign 8
        .long   4                       /* name size */
        .long   16                      /* descriptor size */
        .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
        .asciz  "GNU"
        .long   0xc0000000              /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
        .long   4
        .long   NVIPCFIX_BTI | NVIPCFIX_PAC
        .long   0
        .popsection
#endif

        .section .note.GNU-stack,"",%progbits
