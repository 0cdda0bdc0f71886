/* void *dlsym(void *handle, const char *name)
 *
 * Asks nvipcfix_dlsym_route(handle, name) for the function to run, then tail-jumps
 * to it with the original arguments and the caller's return address still on
 * the stack: glibc's dlsym sees the real caller (RTLD_NEXT needs that). */
        .text
        .globl  dlsym
        .type   dlsym, @function
        .globl  nvipcfix_dlsym_entry    /* the same address, for nvipcfix itself */
        .hidden nvipcfix_dlsym_entry
dlsym:
nvipcfix_dlsym_entry:
        .cfi_startproc
        endbr64
        pushq   %rdi
        .cfi_adjust_cfa_offset 8
        pushq   %rsi
        .cfi_adjust_cfa_offset 8
        subq    $8, %rsp                /* 16-byte alignment for the call */
        .cfi_adjust_cfa_offset 8
        call    nvipcfix_dlsym_route    /* same arguments, in place */
        addq    $8, %rsp
        .cfi_adjust_cfa_offset -8
        popq    %rsi
        .cfi_adjust_cfa_offset -8
        popq    %rdi
        .cfi_adjust_cfa_offset -8
        jmp     *%rax
        .cfi_endproc
        .size   dlsym, .-dlsym

        .section .note.GNU-stack,"",@progbits
