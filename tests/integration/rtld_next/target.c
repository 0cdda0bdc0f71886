int probe_target(void)
{
    return 2;
}
